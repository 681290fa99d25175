"""Dask execution: same h as one process, in both modes, after a worker dies, from Zarr."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from vegan.cluster import connect, local_cluster
from vegan.config import ClusterConfig
from vegan.ot import solve

distributed = pytest.importorskip("distributed")

KW = dict(progress=False, n_samples=8192, max_samples=32768, eval_samples=16384, tol=1e-9)


@pytest.fixture(scope="module")
def client():
    """A real 2-process LocalCluster (one thread each), created inside the test session."""
    with (
        local_cluster(2, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def targets():
    return np.random.default_rng(0).normal(size=(400, 6))


@pytest.fixture(scope="module")
def single(targets):
    return solve(targets, max_iter=25, **KW)


def test_sample_parallel_equals_single_process(client, targets, single):
    res = solve(targets, max_iter=25, client=client, **KW)
    # Counts and Hessian pairs come back in slice order (8192 samples = 2 slices, one per worker):
    # the trajectory is the same bit for bit.
    np.testing.assert_array_equal(res.h, single.h)
    assert res.marginal_error == single.marginal_error
    assert res.execution == {"mode": "samples", "shards": 1, "workers": 2}
    assert single.execution == {"mode": "local", "shards": 1, "workers": 0}


def test_target_sharded_equals_sample_parallel(client, targets, single):
    res = solve(targets, max_iter=25, client=client, mode="targets", **KW)
    np.testing.assert_allclose(res.h, single.h, rtol=0, atol=1e-5)
    assert res.execution == {"mode": "targets", "shards": 2, "workers": 2}


@pytest.mark.parametrize("mode", ["samples", "targets"])
def test_empty_cell_deficits_on_the_cluster_equal_the_local_ones(client, mode):
    """9,000 codes: two slices of hidden samples, sized for all the codes even where a worker holds half."""
    from vegan.ot.counting import LocalEvaluator, hidden_slices
    from vegan.ot.distributed import DaskEvaluator
    from vegan.ot.problem import make_problem

    rng = np.random.default_rng(1)
    problem = make_problem(rng.uniform(size=(9000, 3)))
    h = -0.5 * (problem.y.astype(np.float64) ** 2).sum(1)
    cells = np.sort(rng.choice(9000, 300, replace=False))
    h[cells] -= 0.5
    assert hidden_slices(problem.n) == 2
    local = LocalEvaluator(problem, problem.sampling).deficits(h, cells, iteration=5)
    evaluator = DaskEvaluator(problem, client, mode=mode, device="cpu")
    try:
        remote = evaluator.deficits(h, cells, iteration=5)
    finally:
        evaluator.close()
    assert (local > 0).all()
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-6)


def test_auto_mode_shards_codes_too_big_for_a_worker_and_says_so(client, targets, single, monkeypatch):
    """``mode=auto`` shards the targets when they exceed the workers' share; the result records what it chose."""
    from vegan.cluster import Tasks
    from vegan.ot import distributed as dist

    auto = solve(targets, max_iter=2, client=client, mode="auto", **KW)
    assert auto.execution == {"mode": "samples", "shards": 1, "workers": 2}  # 400 x 6 codes fit easily
    # A share of the worker's memory limit that a third of the codes' working set fills.
    need = targets.shape[0] * targets.shape[1] * dist.BYTES_PER_VALUE
    monkeypatch.setattr(dist, "TARGETS_SHARE", need / (3 * Tasks(client).worker_memory_limit()))
    res = solve(targets, max_iter=25, client=client, mode="auto", **KW)
    assert res.execution["mode"] == "targets" and res.execution["workers"] == 2
    assert res.execution["shards"] in (3, 4)  # ceil(need / share), up to rounding of the share
    np.testing.assert_allclose(res.h, single.h, rtol=0, atol=1e-5)


def test_workers_read_targets_from_zarr(client, targets, single, tmp_path):
    import zarr

    arr = zarr.create_array(str(tmp_path / "codes.zarr"), shape=targets.shape, chunks=(128, 6), dtype="f8")
    arr[...] = targets
    res = solve(zarr.open_array(str(tmp_path / "codes.zarr"), mode="r"), max_iter=25, client=client, **KW)
    np.testing.assert_allclose(res.h, single.h, rtol=0, atol=1e-5)


def test_runs_on_the_run_wide_cluster_named_by_address(client, targets, single):
    """``cluster.address`` (the one cluster setting) reaches the OT engine through the client it opens."""
    with connect(ClusterConfig(address=client.scheduler.address)) as by_address:
        res = solve(targets, max_iter=25, client=by_address, **KW)
    np.testing.assert_allclose(res.h, single.h, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_killed_worker_iteration_is_retried(client, targets):
    """SIGKILL a worker mid-solve: the lost tasks rerun and h is still the single-process h."""
    kw = dict(KW, n_samples=4 * 8192, max_samples=4 * 8192)
    reference = solve(targets, max_iter=40, **kw)
    out = {}
    thread = threading.Thread(target=lambda: out.update(res=solve(targets, max_iter=40, client=client, **kw)))
    pids = client.run(os.getpid)
    thread.start()
    busy: list[str] = []
    while thread.is_alive() and not busy:  # kill a worker while it counts (not at a fixed time: CPUs differ)
        busy = [w for w, tasks in client.processing().items() if any("count" in str(t) for t in tasks)]
        time.sleep(0.005)
    assert busy and thread.is_alive(), "solve finished before a counting task was seen; make it longer"
    os.kill(pids[busy[0]], signal.SIGKILL)
    thread.join(timeout=240)
    assert "res" in out and out["res"].iterations == 40
    np.testing.assert_allclose(out["res"].h, reference.h, rtol=0, atol=1e-5)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


@pytest.mark.slow
def test_counting_tasks_land_on_gpu_workers(targets, single):
    """Workers started with ``--resources GPU=1`` get every counting task; the others none."""
    import subprocess
    import sys

    with (
        local_cluster(1, dashboard_address=":0", resources={"GPU": 1}) as cluster,
        distributed.Client(cluster) as c,
    ):
        cpu_worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                cluster.scheduler_address,
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            c.wait_for_workers(2, timeout=60)
            gpu = [a for a, w in c.scheduler_info()["workers"].items() if w.get("resources", {}).get("GPU")]
            with distributed.get_task_stream(client=c) as stream:
                res = solve(targets, max_iter=25, client=c, **KW)
            counted = [t for t in stream.data if t["key"].startswith("_count_task")]
            assert counted and {t["worker"] for t in counted} == set(gpu)
            np.testing.assert_allclose(res.h, single.h, atol=1e-5)
        finally:
            cpu_worker.terminate()
            cpu_worker.wait(10)
