"""One Dask cluster per run: the setting, ``vegan.cluster.connect``, and stages that use it.

Real clusters only: a ``LocalCluster`` of worker processes, and ``dask scheduler`` /
``dask worker`` processes started from the command line, one of which is SIGKILLed
while the latents stage runs on them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from prefect_server import free_port
from pydantic import ValidationError
from zarr_guard import finished_chunks

from vegan.cluster import ClusterError, active_client, connect
from vegan.config import ClusterConfig, load_config
from vegan.data import ZarrDataset, to_float
from vegan.manifest import Manifest
from vegan.pipeline import preflight, run_pipeline
from vegan.stages.base import StageError
from vegan.stages.context import Run
from vegan.stages.registry import stage_keys
from vegan.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "cli"]


def _ingest(dest: Path, src: str = "mnist", limit: int = 2000, chunk_rows: int = 500) -> subprocess.CompletedProcess:
    cmd = [*CLI, "ingest", src, str(dest), "--limit", str(limit), "--chunk-rows", str(chunk_rows), "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)


def _local_codes(run: Run) -> np.ndarray:
    """Codes encoded here, chunk by chunk, with the trained model: the reference for cluster results."""
    ds = run.dataset
    with torch.no_grad():
        return torch.cat([run.model.encode(to_float(ds.read_chunk(c))) for c in range(ds.n_chunks)]).numpy()


# ------------------------------------------------------------------ the setting
def test_address_is_validated_and_cluster_is_not_part_of_any_stage_key():
    with pytest.raises(ValidationError, match="cluster.address must be none, local or a scheduler URL"):
        ClusterConfig(address="localhost:8786")
    base = load_config("tiny")
    moved = load_config(
        "tiny", overrides=["cluster.address=tcp://10.0.0.1:8786", "cluster.n_workers=8", "cluster.gpu_stages=[latents]"]
    )
    assert moved.cluster.address == "tcp://10.0.0.1:8786"
    assert stage_keys(moved) == stage_keys(base)  # moving a run onto a cluster reuses what it computed


def test_unknown_gpu_stage_is_refused_before_any_stage_runs(tmp_path):
    cfg = load_config("tiny", overrides=["cluster.gpu_stages=[latent]"])
    with pytest.raises(StageError, match=r"cluster.gpu_stages: unknown stage\(s\) \['latent'\]"):
        preflight(cfg, str(tmp_path), "latents")
    run = Run(load_config("tiny", overrides=["cluster.gpu_stages=[latents]"]), str(tmp_path))
    assert run.resources("latents") == {"GPU": 1} and run.resources("ae") is None


def test_connect_none_opens_nothing():
    with connect(ClusterConfig()) as client:
        assert client is None and active_client() is None


def test_unreachable_scheduler_is_named_in_the_error():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=f"cannot connect to the Dask scheduler at {address}"):
        with connect(ClusterConfig(address=address, connect_timeout=1)):
            pass
    assert time.perf_counter() - t0 < 30


def test_local_cluster_has_single_threaded_torch_workers_and_is_closed_after():
    with connect(ClusterConfig(address="local", n_workers=2)) as client:
        assert active_client() is client
        threads = client.run(torch.get_num_threads)
        assert len(threads) == 2 and set(threads.values()) == {1}
        pids = set(client.run(os.getpid).values())
        assert os.getpid() not in pids  # worker processes, not threads of the driver
    assert active_client() is None
    assert client.status == "closed"


def _hold_memory(share: float) -> float:
    """On a worker: hold enough touched memory that the process uses ``share`` of its limit; returns the share."""
    import psutil
    from distributed import get_worker

    worker = get_worker()
    limit = worker.memory_manager.memory_limit
    missing = int(share * limit) - psutil.Process().memory_info().rss
    worker._vegan_held = np.ones(max(missing, 0), dtype=np.uint8)  # unmanaged: spilling cannot free it
    time.sleep(1.0)  # several rounds of the worker's memory monitor (every 100 ms)
    return psutil.Process().memory_info().rss / limit


def test_a_local_cluster_worker_past_80_percent_of_its_memory_limit_keeps_working():
    """Dask's default pauses such a worker until spilling frees memory; torch's memory never spills, so a
    stage on paused workers would wait forever. vegan's local clusters keep them running."""
    with connect(ClusterConfig(address="local", n_workers=1, memory_limit="1GiB")) as client:
        used = client.submit(_hold_memory, 0.87, pure=False).result(timeout=60)
        assert 0.8 < used < 0.95  # past the pause threshold, short of the nanny's restart at 95 %
        [worker] = client.scheduler_info()["workers"].values()
        assert worker["status"] == "running"
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


# ------------------------------------------------------------------ vegan ingest
def test_vegan_ingest_writes_a_uint8_zarr_dataset_and_resumes(tmp_path):
    dest = tmp_path / "mnist.zarr"
    proc = _ingest(dest, limit=600, chunk_rows=250)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "600 rows of shape (1, 28, 28) uint8, 3 chunks written, 0 already done" in proc.stdout
    ds = ZarrDataset(str(dest))
    assert len(ds) == 600 and ds.dtype == np.uint8 and ds.chunk_rows == 250 and ds.has_labels
    again = _ingest(dest, limit=600, chunk_rows=250)
    assert again.returncode == 0 and "0 chunks written, 3 already done" in again.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/images.npz", "OUT"], "source not found: /no/such/images.npz"),
        (["digits", "OUT", "--resize", "64by64"], "resize must look like HxW"),
        (["digits", "OUT", "--cluster", "localhost"], "cluster.address must be none, local or a scheduler URL"),
    ],
)
def test_vegan_ingest_bad_input_is_one_clear_line(tmp_path, args, message):
    args = [str(tmp_path / "out.zarr") if a == "OUT" else a for a in args]
    proc = subprocess.run(
        [*CLI, "ingest", *args, "--quiet"], capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vegan: error:") and message in lines[0], proc.stderr


# ------------------------------------------------------------------ whole runs
@pytest.mark.slow
def test_uint8_zarr_dataset_runs_until_generate_on_a_local_cluster(tmp_path):
    data = tmp_path / "mnist.zarr"
    assert _ingest(data, limit=2000, chunk_rows=500).returncode == 0
    sets = [
        f"data.name={data}",
        "data.limit=null",
        "cluster.address=local",
        "cluster.n_workers=2",
        "latents.chunk_rows=256",
        "ot.max_iter=20",
        "ot.n_samples=2048",
        "ot.eval_samples=8192",
        "generate.centroid_samples=8192",
        "generate.n_samples=128",
    ]
    cmd = [
        *CLI,
        "run",
        "--no-prefect",
        "--quiet",
        "--preset",
        "tiny",
        "--storage",
        str(tmp_path / "run"),
        "--until",
        "generate",
        *[a for s in sets for a in ("--set", s)],
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    cfg = load_config("tiny", overrides=sets)
    run = Run(cfg, str(tmp_path / "run"), progress=False)
    for stage in ("ae", "latents", "ot", "generate"):
        assert run.manifest.is_done(stage), stage
    assert not run.manifest.is_done("gan")
    assert run.manifest.done_info("ae")["n_train"] == 2000
    info = run.manifest.done_info("latents")
    assert (info["n"], info["chunks"], info["chunks_written"]) == (2000, 8, 8)
    np.testing.assert_allclose(run.codes, _local_codes(run), rtol=1e-4, atol=1e-5)
    gen = zarr.open_group(run.zarr_store("generate", read_only=True), mode="r")
    codes = np.asarray(gen["codes"][:])
    assert codes.shape == (128, cfg.ae.latent_dim) and np.isfinite(codes).all()


# ----------------------------------------------- a worker killed mid-stage (real CLI processes)
def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_latents_survive_a_worker_killed_by_sigkill(tmp_path):
    data = tmp_path / "mnist.zarr"
    assert _ingest(data, limit=12_000, chunk_rows=1000).returncode == 0
    sets = [
        f"data.name={data}",
        "data.limit=null",
        "ae.steps=20",
        "ae.width=32",
        "latents.chunk_rows=200",
        "latents.batch_size=50",
    ]
    run_dir = tmp_path / "run"
    run_pipeline(load_config("tiny", overrides=sets), str(run_dir), until="ae", progress=False)

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        _start(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            tmp_path / "scheduler.log",
        )
    ]
    try:
        for i in range(2):
            procs.append(
                _start(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--name",
                        f"w{i}",
                    ],
                    tmp_path / f"worker{i}.log",
                )
            )
        cfg = load_config("tiny", overrides=[*sets, f"cluster.address={address}"])
        with connect(ClusterConfig(address=address)) as probe:
            probe.wait_for_workers(2, timeout=120)
            victim = probe.run(
                os.getpid, workers=[w for w, info in probe.scheduler_info()["workers"].items() if info["name"] == "w0"]
            )
        victim_pid = next(iter(victim.values()))

        m = Manifest(Storage(str(run_dir)), cfg)
        latents = run_dir / m.output("latents")
        result: dict = {}

        def run_stage() -> None:
            try:
                result.update(run_pipeline(cfg, str(run_dir), until="latents", progress=False))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

        stage = threading.Thread(target=run_stage)
        stage.start()
        deadline = time.time() + 300
        complete = latents / "complete" / "c"
        while len(finished_chunks(complete)) < 4:
            assert stage.is_alive() and time.time() < deadline, "the stage ended before a worker could be killed"
            time.sleep(0.01)
        done_before = finished_chunks(complete)
        finished = {
            p: p.stat().st_mtime_ns
            for c in done_before
            for p in (latents / "codes" / "c" / str(c)).rglob("*")
            if p.is_file()
        }
        os.kill(victim_pid, signal.SIGKILL)
        complete_at_kill = finished_chunks(complete)
        print(f"killed worker w0 (pid {victim_pid}) after {len(done_before)} of 60 chunks")
        stage.join(timeout=300)
        assert not stage.is_alive() and "error" not in result, result.get("error")
        n_chunks = 60
        assert len(done_before) < n_chunks, "every chunk was done before the kill: the test proves nothing"
        assert procs[1].wait(timeout=30) == -signal.SIGKILL

        info = result["latents"]
        # Chunks the killed worker finished but whose results died with it count as skipped when their tasks
        # rerun (one on a quiet machine, several under load): only chunks complete at the kill can be.
        assert info["chunks"] == n_chunks and not info["reused"]
        assert info["chunks_written"] + info["chunks_skipped"] == n_chunks
        assert info["chunks_skipped"] <= len(complete_at_kill)
        for p, mtime in finished.items():
            assert p.stat().st_mtime_ns == mtime, f"finished chunk file {p} was rewritten"
        run = Run(cfg, str(run_dir), progress=False)
        np.testing.assert_allclose(run.codes, _local_codes(run), rtol=1e-4, atol=1e-5)
        assert (
            np.asarray(zarr.open_group(run.zarr_store("latents", read_only=True), mode="r")["labels"][:])
            == run.dataset.labels.numpy()
        ).all()
    finally:
        for proc in reversed(procs):
            _stop(proc)
