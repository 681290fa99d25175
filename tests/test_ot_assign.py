"""The cell-assignment kernel against brute force (ties included), chunking and memory bounds."""

from __future__ import annotations

import pytest
import torch

from vegan.ot.assign import Chunking, assign, assign_counts, choose_chunking, topk_cells

CHUNKINGS = [Chunking(4096, 1024), Chunking(7, 13), Chunking(100, 1), Chunking(1, 300), Chunking(64, 299)]


def _integer_problem(seed: int, N=3000, n=300, d=4):
    """Small integers: every score is exact in fp32, and ties are frequent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (N, d), generator=g).float()
    y = torch.randint(-3, 4, (n, d), generator=g).float()
    h = torch.randint(-3, 4, (n,), generator=g).float()
    return x, y, h


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=str)
def test_matches_brute_force_with_ties(chunking):
    x, y, h = _integer_problem(0)
    scores = x @ y.T + h
    best = scores.max(1).values
    # Lowest index among the maxima, computed independently of torch.argmax.
    ar = torch.arange(y.shape[0]).expand_as(scores)
    ref = torch.where(scores == best[:, None], ar, y.shape[0]).min(1).values
    n_ties = int(((scores == best[:, None]).sum(1) > 1).sum())
    assert n_ties > 100  # the test really exercises ties

    res = assign_counts(x, y, h, chunking=chunking)
    assert torch.equal(res.idx, ref)
    assert torch.equal(res.counts, torch.bincount(ref, minlength=y.shape[0]))
    assert torch.equal(res.max_scores, best)
    assert torch.equal(assign(x, y, h, chunking=chunking), ref)


def test_random_floats_match_full_matrix():
    g = torch.Generator().manual_seed(1)
    x, y, h = torch.rand(5000, 16, generator=g) * 2 - 1, torch.randn(2000, 16, generator=g), torch.randn(2000, generator=g)
    scores = x.double() @ y.double().T + h.double()
    top2 = scores.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # outside fp32 rounding of the scores
    ref = scores.argmax(1)
    for chunking in [Chunking(4096, 1024), Chunking(333, 77)]:
        res = assign_counts(x, y, h, chunking=chunking)
        assert torch.equal(res.idx[clear], ref[clear])
        assert torch.allclose(res.max_scores.double(), top2[:, 0], atol=1e-5)


def test_chunked_equals_unchunked_bitwise():
    g = torch.Generator().manual_seed(2)
    x, y, h = torch.rand(3000, 8, generator=g), torch.randn(999, 8, generator=g), torch.randn(999, generator=g)
    one = assign_counts(x, y, h, chunking=Chunking(3000, 999))
    for chunking in [Chunking(500, 100), Chunking(4096, 64), Chunking(17, 998)]:
        res = assign_counts(x, y, h, chunking=chunking)
        assert torch.equal(res.idx, one.idx)
        assert torch.equal(res.counts, one.counts)


def test_score_buffers_bounded_by_chunking(monkeypatch):
    """No GEMM output in the kernel is larger than one (block_rows, chunk_cols) tile."""
    shapes = []
    real = torch.addmm

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "addmm", spy)
    x, y, h = torch.rand(5000, 8), torch.randn(3000, 8), torch.randn(3000)
    chunking = Chunking(256, 128)
    assign_counts(x, y, h, chunking=chunking, want_idx=False)
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
    assert torch.equal(s, ref_s[:, :5])
    # Equal scores come lowest index first; ties at the 5th place may keep any of them.
    assert torch.equal(i[:, 0], assign(x, y, h))
    assert torch.equal(scores.gather(1, i), s)


def test_bf16_path_rescored_in_fp32():
    g = torch.Generator().manual_seed(4)
    x, y, h = torch.rand(2000, 16, generator=g), torch.randn(500, 16, generator=g), torch.randn(500, generator=g)
    exact = assign_counts(x, y, h)
    approx = assign_counts(x, y, h, precision="bf16", chunking=Chunking(512, 64))
    assert (approx.idx == exact.idx).float().mean() > 0.9
    # Max scores are fp32 rescorings of the chosen cell, never bf16 values.
    full = x @ y.T + h
    assert torch.allclose(approx.max_scores, full.gather(1, approx.idx[:, None])[:, 0], atol=1e-5)


@pytest.mark.parametrize(
    "shapes",
    [((5, 3), (4, 2), (4,)), ((5, 2), (4, 2), (3,)), ((5,), (4, 2), (4,)), ((5, 2), (0, 2), (0,))],
)
def test_bad_shapes(shapes):
    xs, ys, hs = shapes
    with pytest.raises(ValueError):
        assign(torch.zeros(xs), torch.zeros(ys), torch.zeros(hs))
