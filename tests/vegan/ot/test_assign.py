"""The cell-assignment kernel against brute force (ties included), chunking and memory bounds."""

from __future__ import annotations

import pytest
import torch

from vegan.ot.assign import (
    Chunking,
    _gemm_mode,
    _Operands,
    assign,
    assign_counts,
    choose_chunking,
    resolve_precision,
    topk_cells,
)

CHUNKINGS = [Chunking(4096, 1024), Chunking(7, 13), Chunking(100, 1), Chunking(1, 300), Chunking(64, 299)]
PRECISIONS = ["float32", "screened"]


def _integer_problem(seed: int, N=3000, n=300, d=4):
    """Small integers: every score is exact in fp32, and ties are frequent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (N, d), generator=g).float()
    y = torch.randint(-3, 4, (n, d), generator=g).float()
    h = torch.randint(-3, 4, (n,), generator=g).float()
    return x, y, h


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=str)
def test_matches_brute_force_with_ties(chunking, precision):
    x, y, h = _integer_problem(0)
    scores = x @ y.T + h
    best = scores.max(1).values
    # Lowest index among the maxima, computed independently of torch.argmax.
    ar = torch.arange(y.shape[0]).expand_as(scores)
    ref = torch.where(scores == best[:, None], ar, y.shape[0]).min(1).values
    n_ties = int(((scores == best[:, None]).sum(1) > 1).sum())
    assert n_ties > 100  # the test really exercises ties

    res = assign_counts(x, y, h, chunking=chunking, precision=precision)
    assert torch.equal(res.idx, ref)
    assert torch.equal(res.counts, torch.bincount(ref, minlength=y.shape[0]))
    assert torch.equal(res.max_scores, best.double())
    assert torch.equal(assign(x, y, h, chunking=chunking, precision=precision), ref)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("d", [2, 16, 64])
def test_random_floats_are_the_float64_argmax(d, precision):
    """Every row, near-ties included: the answer is the argmax of the float64 scores."""
    g = torch.Generator().manual_seed(d)
    x = torch.rand(3000, d, generator=g) * 2 - 1
    y, h = torch.randn(2000, d, generator=g) / d**0.5, torch.randn(2000, generator=g) * 0.1
    scores = x.double() @ y.double().T + h.double()
    top2 = scores.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1]) < 1e-3).sum() > 0  # some rows lie within bf16 rounding of a tie
    free = _near_tie_rows(scores)  # float64 rounding may resolve these either way
    for chunking in [Chunking(4096, 1024), Chunking(333, 77)]:
        res = assign_counts(x, y, h, chunking=chunking, precision=precision)
        assert bool(((res.idx == scores.argmax(1)) | free).all())
        assert torch.allclose(res.max_scores, top2[:, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("d", [1, 7, 64, 130])
def test_screening_error_within_its_bound(d, scale):
    """The a-priori rounding bound that makes screening exact holds on adversarial-ish inputs."""
    g = torch.Generator().manual_seed(d)
    y = torch.randn(500, d, generator=g) * scale
    y[:10] *= 50  # a few long targets: the Cauchy-Schwarz and coordinate bounds both matter
    h = torch.randn(500, generator=g) * scale * 10
    x = torch.rand(2000, d, generator=g) * 2 - 1
    exact = x.double() @ y.double().T + h.double()
    for mode in PRECISIONS:
        ops = _Operands(y, h, mode)
        with _gemm_mode(mode):
            screen = ops.rows(x) @ ops.ys.float().T
        err = (screen.double() - exact).abs().amax(1)
        assert bool((err <= ops.bound(x)).all()), mode


def _near_tie_rows(scores: torch.Tensor, gap: float = 1e-12) -> torch.Tensor:
    """Rows whose two best float64 scores are closer than float64 rounding can resolve."""
    top2 = scores.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) < gap


def test_precisions_agree_on_a_large_problem():
    """What Assignment promises: the same cells (up to float64-rounding ties) and, for the same
    cell, bitwise the same max score, whichever precision screened the tiles on this CPU."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8192, 64, generator=g) * 2 - 1
    y, h = torch.randn(20000, 64, generator=g) / 8, torch.randn(20000, generator=g) * 0.01
    a = assign_counts(x, y, h, precision="float32")
    b = assign_counts(x, y, h, precision="screened")
    exact = x.double() @ y.double().T + h.double()
    free = _near_tie_rows(exact)
    same = a.idx == b.idx
    assert bool((same | free).all())
    assert int(same.sum()) >= 8192 - int(free.sum())
    assert torch.equal(a.max_scores[same], b.max_scores[same])
    bound = 65 * 2.0**-53 * ((x.double().abs() @ y.double().abs().T).amax(1) + h.abs().max())
    for res in (a, b):
        assert bool(((res.max_scores - exact.amax(1)).abs() <= bound).all())


def test_non_finite_scores_are_an_error():
    x, y, h = torch.rand(10, 3), torch.randn(5, 3), torch.randn(5)
    y[2, 1] = float("nan")
    for precision in PRECISIONS:
        with pytest.raises(ValueError, match="non-finite"):
            assign(x, y, h, precision=precision)


def test_resolve_precision():
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("screened", "cpu") == "screened"
    assert resolve_precision("auto", "cpu", 64) in ("float32", "screened")
    assert resolve_precision("auto", "cpu", 16) == "float32"  # screening does not pay at small d
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("bf16", "cpu")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_chunked_equals_unchunked_bitwise(precision):
    g = torch.Generator().manual_seed(2)
    x, y, h = torch.rand(3000, 8, generator=g), torch.randn(999, 8, generator=g), torch.randn(999, generator=g)
    one = assign_counts(x, y, h, chunking=Chunking(3000, 999), precision=precision)
    for chunking in [Chunking(500, 100), Chunking(4096, 64), Chunking(17, 998)]:
        res = assign_counts(x, y, h, chunking=chunking, precision=precision)
        assert torch.equal(res.idx, one.idx)
        assert torch.equal(res.counts, one.counts)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_score_buffers_bounded_by_chunking(monkeypatch, precision):
    """No GEMM output in the kernel (screening or rescoring) is larger than one (block_rows, chunk_cols) tile."""
    shapes = []

    def spy(real):
        def wrapped(*args, **kwargs):
            out = real(*args, **kwargs)
            shapes.append(tuple(out.shape))
            return out

        return wrapped

    monkeypatch.setattr(torch, "addmm", spy(torch.addmm))
    monkeypatch.setattr(torch, "mm", spy(torch.mm))
    x, y, h = torch.rand(5000, 8), torch.randn(3000, 8), torch.randn(3000)
    chunking = Chunking(256, 128)
    assign_counts(x, y, h, chunking=chunking, want_idx=False, precision=precision)
    assert shapes and max(a * b for a, b in shapes) <= 256 * 128
    assert chunking.buffer_bytes(3000) == 256 * (128 + 24) * 4


def test_choose_chunking_cpu():
    c = choose_chunking(10, 64, "cpu")
    assert c.chunk_cols == 10 and c.block_rows >= 1024
    big = choose_chunking(1_000_000, 64, "cpu")
    assert big.buffer_bytes(1_000_000) < 64 * 2**20  # tens of MB, whatever n is


def test_topk_matches_sort():
    x, y, h = _integer_problem(3, N=500, n=200)
    scores = x @ y.T + h
    ref_s, ref_i = torch.sort(scores, dim=1, descending=True, stable=True)
    s, i = topk_cells(x, y, h, 5, chunking=Chunking(64, 17))
    assert s.dtype == torch.float64 and torch.equal(s, ref_s[:, :5].double())
    # Equal scores come lowest index first; ties at the 5th place may keep any of them.
    assert torch.equal(i[:, 0], assign(x, y, h))
    assert torch.equal(scores.gather(1, i).double(), s)


@pytest.mark.parametrize(
    "shapes",
    [((5, 3), (4, 2), (4,)), ((5, 2), (4, 2), (3,)), ((5,), (4, 2), (4,)), ((5, 2), (0, 2), (0,))],
)
def test_bad_shapes(shapes):
    xs, ys, hs = shapes
    with pytest.raises(ValueError):
        assign(torch.zeros(xs), torch.zeros(ys), torch.zeros(hs))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cached_targets_follow_in_place_edits_and_new_offsets(precision):
    x, y, h = _integer_problem(6, N=500, n=100)
    first = assign(x, y, h, precision=precision)
    h2 = torch.randn(100, generator=torch.Generator().manual_seed(1)) * 5
    assert torch.equal(assign(x, y, h2, precision=precision), (x @ y.T + h2).argmax(1))
    y.mul_(-1)  # same tensor, new values: the cached screening copy must not be reused
    flipped = assign(x, y, h, precision=precision)
    assert torch.equal(
        flipped,
        torch.where((x @ y.T + h) == (x @ y.T + h).max(1, keepdim=True).values, torch.arange(100), 100).min(1).values,
    )
    assert not torch.equal(flipped, first)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("chunking", CHUNKINGS[:3], ids=str)
def test_runner_up_within_margin_matches_brute_force(chunking, precision):
    """``margin``: the second-best cell where it scores within margin of the best (the Newton step's pairs)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2000, 5, generator=g) * 2 - 1
    y = torch.randn(300, 5, generator=g)
    h = torch.randn(300, generator=g) * 0.1
    res = assign_counts(x, y, h, chunking=chunking, precision=precision, margin=0.3)
    top = (x.double() @ y.double().T + h.double()).topk(2, dim=1)
    gap = top.values[:, 0] - top.values[:, 1]
    clear = (gap - 0.3).abs() > 1e-9  # rows exactly at the margin may go either way
    assert torch.equal(res.idx, top.indices[:, 0])
    expected = torch.where(gap < 0.3, top.indices[:, 1], -1)
    assert torch.equal(res.second[clear], expected[clear])
    near = res.second >= 0
    assert 0.2 < float(near.float().mean()) < 0.9
    torch.testing.assert_close(res.second_scores[near], top.values[near, 1], rtol=0, atol=1e-12)
    assert assign_counts(x, y, h, chunking=chunking, precision=precision).second is None
