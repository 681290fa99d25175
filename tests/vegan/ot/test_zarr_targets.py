"""Codes that stay in Zarr: OT and generation on a real LocalCluster whose workers read the store,
while this process (the driver) is forbidden to read a single code."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr_guard import CodesRead, no_codes_here

from vegan.cluster import Tasks, local_cluster
from vegan.ot import NewtonSolver, solve
from vegan.ot import distributed as dist
from vegan.ot.generate import generate, generate_to_zarr
from vegan.ot.problem import make_problem
from vegan.ot.targets import ZarrTargets, blocks, fit_scaling

distributed = pytest.importorskip("distributed")

KW = dict(progress=False, n_samples=8192, max_samples=32768, eval_samples=16384, tol=1e-9)


@pytest.fixture(scope="module")
def client():
    with (
        local_cluster(2, dashboard_address=":0", memory_limit="1.5GiB") as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    """400 float32 codes in a Zarr array of 128-row chunks."""
    y = np.random.default_rng(0).normal(size=(400, 6)).astype(np.float32)
    url = str(tmp_path_factory.mktemp("codes") / "codes.zarr")
    arr = zarr.create_array(url, shape=y.shape, chunks=(128, 6), dtype="float32")
    arr[...] = y
    return y, ZarrTargets.open(url)


@pytest.fixture(scope="module")
def single(codes):
    return solve(codes[0], max_iter=25, **KW)


def test_the_guard_catches_a_driver_read(codes, monkeypatch):
    with no_codes_here(monkeypatch, 6), pytest.raises(CodesRead):
        codes[1].read(0, 10)


def test_block_statistics_match_in_memory_bit_for_bit(codes, client):
    y, ref = codes
    assert blocks(400) == [(0, 400)]
    for source in ("cube", "ball"):
        here, there = fit_scaling(y, source), fit_scaling(ref, source, Tasks(client))
        np.testing.assert_array_equal(here.center, there.center)
        assert here.scale == there.scale
    p_mem, p_zarr = make_problem(y), make_problem(ref, tasks=Tasks(client))
    assert p_zarr.y is None and p_zarr.store == ref
    np.testing.assert_array_equal(p_mem.sq_norms, p_zarr.sq_norms)
    assert p_mem.max_abs_row_sum == p_zarr.max_abs_row_sum
    assert p_mem.fingerprint() == p_zarr.fingerprint()  # a run may move onto a cluster and resume


def test_the_solver_start_takes_the_squared_norms_over(codes, client):
    """The Voronoi start is computed in the buffer the problem hands over; the problem keeps no n-vector."""
    y, ref = codes
    p_mem, p_zarr = make_problem(y), make_problem(ref, tasks=Tasks(client))
    start = -0.5 * p_mem.sq_norms
    for problem in (p_mem, p_zarr):
        fingerprint = problem.fingerprint()
        state = NewtonSolver().init(problem)
        np.testing.assert_array_equal(state.h, start)
        assert problem.stats.sq_norms is None and problem.fingerprint() == fingerprint
    np.testing.assert_array_equal(p_mem.sq_norms, -2 * start)  # targets in memory: recomputed when asked
    with pytest.raises(ValueError, match="make_problem"):
        _ = p_zarr.sq_norms  # on a store: the driver does not read the codes again


def test_ot_on_the_cluster_never_reads_codes_on_the_driver(codes, client, single, monkeypatch):
    _, ref = codes
    with no_codes_here(monkeypatch, 6):
        res = solve(ref, max_iter=25, client=client, mode="samples", **KW)
    # The same scaled rows and the same slices: the single-process trajectory bit for bit.
    np.testing.assert_array_equal(res.h, single.h)
    assert res.marginal_error == single.marginal_error


def test_a_cluster_solve_resumes_from_its_checkpoints(codes, client, single, tmp_path, monkeypatch):
    """Stopped after 10 iterations and resumed (both from the store), it ends where one run of 25 does."""
    from vegan.checkpoint import CheckpointDir
    from vegan.storage import Storage

    _, ref = codes
    ckpt = CheckpointDir(Storage(str(tmp_path / "ot")))
    with no_codes_here(monkeypatch, 6):
        first = solve(ref, max_iter=10, client=client, checkpoints=ckpt, checkpoint_every=5, **KW)
        assert first.iterations == 10 and ckpt.steps()[-1] == 10
        res = solve(ref, max_iter=25, client=client, checkpoints=ckpt, checkpoint_every=5, **KW)
    np.testing.assert_array_equal(res.h, single.h)


def test_targets_mode_reads_one_shard_per_task_from_the_store(codes, client, single, monkeypatch):
    _, ref = codes
    with no_codes_here(monkeypatch, 6):
        res = solve(ref, max_iter=25, client=client, mode="targets", **KW)
    np.testing.assert_allclose(res.h, single.h, rtol=0, atol=1e-5)
    # Shard i prefers worker i: each worker loaded one shard, never the other.
    held = client.run(lambda: [k[1:3] for k in __import__("vegan.ot.targets").ot.targets._CACHE])
    shards = sorted(tuple(r for r in rows if r != (0, 400)) for rows in held.values())
    assert shards == [((0, 200),), ((200, 400),)]


def test_auto_mode_follows_the_workers_memory_limit(codes, client, monkeypatch):
    limit = Tasks(client).worker_memory_limit()
    assert limit == int(1.5 * 2**30)
    assert dist.choose_mode(1000, 64, limit) == "samples"
    assert dist.choose_mode(4_000_000, 64, limit) == "targets"  # 2 GB of targets + copies > a 1.5 GiB worker
    assert dist.choose_mode(4_000_000, 64, None) == "samples"  # no limit known
    shards = dist.n_shards(4_000_000, 64, 2, limit)  # a shard per worker is still too big: more shards
    assert shards > 2 and 4_000_000 / shards * 64 * dist.BYTES_PER_VALUE <= dist.TARGETS_SHARE * limit
    problem = make_problem(codes[1], tasks=Tasks(client))
    auto = dist.DaskEvaluator(problem, client=client, mode="auto")
    assert auto.mode == "samples"
    monkeypatch.setattr(dist, "TARGETS_SHARE", 1e-6)  # the same 400 codes "exceed" the workers now
    sharded = dist.DaskEvaluator(problem, client=client, mode="auto")
    assert sharded.mode == "targets" and len(sharded.shards) == dist.n_shards(400, 6, 2, limit) > 2
    h = -0.5 * problem.sq_norms
    a, b = auto(h, 0, 0, 2, 4096), sharded(h, 0, 0, 2, 4096)
    np.testing.assert_array_equal(a.counts, b.counts)


GEN = dict(n=600, k=6, angle_threshold=20, seed=5, centroid_samples=10_000, block_size=400, progress=False)


@pytest.mark.parametrize("shards", [1, 2])
def test_generation_on_workers_fetches_codes_by_index_and_is_rerun_idempotent(
    codes, client, single, tmp_path, monkeypatch, shards
):
    y, ref = codes
    local = generate(y, single, **GEN)
    url = str(tmp_path / "samples.zarr")
    with no_codes_here(monkeypatch, 6), distributed.get_task_stream(client=client) as stream:
        info = generate_to_zarr(ref, single, url, client=client, shards=shards, chunk_rows=256, **GEN)
    assert (info["n"], info["chunks"], info["chunks_written"]) == (600, 3, 3)
    # Only the blocks whose samples were used were started (no block ran to be thrown away).
    used = -(-info["n_drawn"] // GEN["block_size"])
    assert sum(t["key"].startswith("_topk-") for t in stream.data) == used * shards
    assert info["rejection_rate"] == pytest.approx(local.rejection_rate)
    group = zarr.open_group(url, mode="r")
    np.testing.assert_allclose(group["codes"][:], local.codes, rtol=0, atol=1e-5)
    assert (group["cells"][:] == local.cells).mean() > 0.99
    # A rerun with everything done returns at once and writes nothing.
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "samples.zarr").rglob("*") if p.is_file()}
    again = generate_to_zarr(ref, single, url, client=client, shards=shards, chunk_rows=256, **GEN)
    assert again["chunks_written"] == 0 and again["rejection_rate"] == info["rejection_rate"]
    assert {p: p.stat().st_mtime_ns for p in files} == files
    # A chunk lost in a crash (marker unset, rows garbage) is rewritten alone, with the same rows.
    g = zarr.open_group(url, mode="r+")
    before = g["codes"][256:512]
    g["complete"][1] = False
    g["codes"][256:512] = np.nan
    third = generate_to_zarr(ref, single, url, client=client, shards=shards, chunk_rows=256, **GEN)
    assert third["chunks_written"] == 1
    np.testing.assert_array_equal(zarr.open_group(url, mode="r")["codes"][256:512], before)


def test_generation_in_process_writes_the_same_chunks(codes, single, tmp_path):
    y, _ = codes
    local = generate(y, single, **GEN)
    url = str(tmp_path / "s.zarr")
    info = generate_to_zarr(y, single, url, chunk_rows=256, **GEN)
    assert info["chunks_written"] == 3
    np.testing.assert_array_equal(zarr.open_group(url, mode="r")["codes"][:], local.codes)


def test_a_store_of_another_shape_is_refused(codes, single, tmp_path):
    y, _ = codes
    url = str(tmp_path / "s.zarr")
    generate_to_zarr(y, single, url, chunk_rows=256, **GEN)
    with pytest.raises(ValueError, match="expected \\(700, 6\\) in chunks of 256"):
        generate_to_zarr(y, single, url, chunk_rows=256, **{**GEN, "n": 700})
