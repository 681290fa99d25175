"""The fault matrix: a Dask worker SIGKILLed mid-stage in OT (sample-parallel and target-sharded) and in
generate, on real ``dask scheduler`` / ``dask worker`` processes (nannies restart the killed worker).

Each run must end as an uninterrupted in-process run of the same config does (the OT potential to
1e-9, the same iterations; generated codes to 1e-5, as in ``test_ot_generate_on_cluster``), and no
finished output is rewritten: checkpoints written before the kill keep their bytes, each output chunk
is written once. The latents stage's kill test is in ``tests/vegan/test_cluster.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from prefect_server import free_port

from vegan.cluster import connect
from vegan.config import ClusterConfig, load_config
from vegan.ot import load_result
from vegan.pipeline import run_pipeline
from vegan.stages.context import Run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SETS = [
    "ae.steps=20",
    "ot.max_iter=12",
    "ot.tol=0.01",
    "ot.checkpoint_every=2",
    "ot.n_samples=8192",
    "ot.max_samples=16384",
    "ot.eval_samples=16384",
    "generate.centroid_samples=32768",
    "generate.n_samples=300",
]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                            start_new_session=True)  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two nanny-supervised workers, each its own process; yields the address."""
    logs = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(BIN / "dask")
    procs = [_start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                    logs / "scheduler.log")]  # fmt: skip
    try:
        for i in range(2):
            procs.append(_start([dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}",
                                 "--memory-limit", "2GiB"], logs / f"worker{i}.log"))  # fmt: skip
        with connect(ClusterConfig(address=address)) as probe:
            probe.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


def worker_pid(address: str, name: str = "w0", timeout: float = 120) -> int:
    """The pid of worker ``name``'s process (not its nanny), once it is connected. A plain client: vegan's
    ``connect`` registers a worker plugin, a broadcast that fails while a killed worker is being removed."""
    from distributed import Client

    deadline = time.time() + timeout
    with Client(address, timeout=30) as probe:
        while True:
            found = [a for a, w in probe.scheduler_info()["workers"].items() if w["name"] == name]
            if found:
                try:
                    return next(iter(probe.run(os.getpid, workers=found).values()))
                except Exception:  # noqa: BLE001 - it went away between the two calls
                    pass
            assert time.time() < deadline, f"worker {name} did not come back"
            time.sleep(0.2)


def run_with_kills(cfg, run_dir: Path, until: str, address: str, points) -> tuple[dict, list[float]]:
    """``run_pipeline`` in a thread; at the i-th ``(ready, stage)`` of ``points`` worker ``w{i}`` is
    SIGKILLed while ``stage`` is still unfinished. Returns the stage infos and the kill times."""
    result: dict = {}

    def target() -> None:
        try:
            result.update(run_pipeline(cfg, str(run_dir), until=until, progress=False))
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    killed = []
    m = Run(cfg, str(run_dir)).manifest
    pids = [worker_pid(address, f"w{i}") for i in range(len(points))]  # w0 at the first point, w1 at the next
    for (ready, stage), pid in zip(points, pids):
        deadline = time.time() + 300
        while not ready():
            assert thread.is_alive() and time.time() < deadline, f"{stage} ended before a worker could be killed"
            time.sleep(0.01)
        killed.append(time.time_ns())
        os.kill(pid, signal.SIGKILL)
        assert not m.is_done(stage), f"{stage} finished before the kill: the test proves nothing"
    thread.join(timeout=400)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    for i, pid in enumerate(pids):  # the nannies started fresh worker processes
        assert worker_pid(address, f"w{i}") != pid
    return result, killed


def _ckpts(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("ckpt-*.pt")}


def _same_potential(a: Run, b: Run) -> None:
    ra, rb = load_result(a.dir("ot")), load_result(b.dir("ot"))
    np.testing.assert_allclose(rb.h, ra.h, rtol=0, atol=1e-9)
    assert ra.iterations == rb.iterations


@pytest.mark.parametrize("mode", ["samples", "targets"])
def test_ot_and_generate_survive_a_worker_killed_mid_stage(cluster, tmp_path, mode):
    here = load_config("tiny", overrides=[*SETS, f"ot.mode={mode}"])
    run_pipeline(here, str(tmp_path / "ref"), until="latents", progress=False)
    shutil.copytree(tmp_path / "ref", tmp_path / "run")  # the same codes for both runs
    until = "generate" if mode == "samples" else "ot"
    run_pipeline(here, str(tmp_path / "ref"), until=until, progress=False)  # uninterrupted, in process

    cfg = load_config("tiny", overrides=[*SETS, f"ot.mode={mode}", f"cluster.address={cluster}"])
    run = Run(cfg, str(tmp_path / "run"))
    ot_dir, samples = Path(run.dir("ot").url), Path(run.dir("generate").url)
    seen: dict = {}

    def first_checkpoint() -> bool:
        found = _ckpts(ot_dir)
        if found:
            seen.update(found)
        return bool(found)

    points = [(first_checkpoint, "ot")]
    if until == "generate":
        points.append((lambda: (samples / "zarr.json").exists(), "generate"))
    info, killed = run_with_kills(cfg, tmp_path / "run", until, cluster, points)

    assert info["ot"]["mode"] == mode and not info["ot"]["reused"]
    for name, (mtime, data) in seen.items():  # written before the kill: never rewritten (pruning may drop it)
        p = ot_dir / name
        assert not p.exists() or (p.stat().st_mtime_ns, p.read_bytes()) == (mtime, data), name
    _same_potential(Run(here, str(tmp_path / "ref")), run)
    if until == "generate":
        ga = zarr.open_group(Run(here, str(tmp_path / "ref")).zarr_store("generate", read_only=True), mode="r")
        gb = zarr.open_group(run.zarr_store("generate", read_only=True), mode="r")
        np.testing.assert_allclose(gb["codes"][:], ga["codes"][:], rtol=0, atol=1e-5)
        assert info["generate"]["chunks"] == 1 and not info["generate"]["reused"]
        chunk = samples / "codes" / "c" / "0" / "0"
        assert chunk.stat().st_mtime_ns > killed[-1]  # written once, after the kill (the draw was interrupted)


def test_eval_feature_extraction_survives_a_worker_killed_mid_stage(cluster, tmp_path):
    """Done last: a worker dies while feature-extraction tasks run; the metrics are those of an
    uninterrupted in-process evaluation (to the tolerance of ``test_eval_cluster``)."""
    from distributed import Client

    sets = [*SETS, "ot.max_iter=4", "gan.steps=4", "eval.n_samples=128"]
    here = load_config("tiny", overrides=sets)
    run_pipeline(here, str(tmp_path / "ref"), until="gan", progress=False)
    shutil.copytree(tmp_path / "ref", tmp_path / "run")
    ref = run_pipeline(here, str(tmp_path / "ref"), progress=False)["eval"]
    cfg = load_config("tiny", overrides=[*sets, f"cluster.address={cluster}"])

    with Client(cluster, timeout=30) as probe:

        def extracting() -> bool:
            return any(str(k).startswith("_features_task") for ks in probe.processing().values() for k in ks)

        info, _ = run_with_kills(cfg, tmp_path / "run", "eval", cluster, [(extracting, "eval")])
    got = info["eval"]
    assert not got["reused"] and set(got["metrics"]) == set(ref["metrics"])
    for name, m in ref["metrics"].items():
        for key, value in m.items():
            assert got["metrics"][name][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)
