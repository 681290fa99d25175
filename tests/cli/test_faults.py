"""SIGKILL each stage mid-way, rerun the same command, check finished work is reused.

Each test runs ``vegan run`` in a subprocess, kills it with SIGKILL as soon as a
checkpoint (or finished latent chunk) appears in storage, reruns the same command
and compares with an uninterrupted run where the computation is deterministic.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from zarr_guard import finished_chunks

from vegan.config import load_config
from vegan.manifest import Manifest
from vegan.stages.context import Run
from vegan.storage import Storage

pytestmark = pytest.mark.slow

VEGAN = [sys.executable, "-m", "cli", "run", "--no-prefect", "--quiet", "--preset", "tiny"]


def vegan_run(storage: Path, until: str, sets: list[str]) -> subprocess.CompletedProcess:
    cmd = [*VEGAN, "--storage", str(storage), "--until", until, *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_when(storage: Path, until: str, sets: list[str], ready, timeout: float = 300) -> None:
    """Start ``vegan run`` and SIGKILL it once ``ready()`` is true; fail if it finished first."""
    cmd = [*VEGAN, "--storage", str(storage), "--until", until, *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the kill point never came")


def _cfg(sets):
    return load_config("tiny", overrides=sets)


@pytest.fixture(scope="module")
def tiny_upstream(tmp_path_factory) -> Path:
    """One uninterrupted tiny run up to ``generate`` (the preset's AE, latents, OT, samples): the kill
    tests of later stages copy it rather than train the same autoencoder again. Their ``--set``s
    change only the stage under test, so the copied upstream stages keep their keys and are reused."""
    run_dir = tmp_path_factory.mktemp("tiny-upstream") / "run"
    vegan_run(run_dir, "generate", [])
    return run_dir


def test_kill_during_ae_training_resumes_from_last_checkpoint(tmp_path):
    sets = ["ae.steps=200", "ae.checkpoint_every=25"]
    m = Manifest(Storage(str(tmp_path / "a")), _cfg(sets))
    ckpts = tmp_path / "a" / m.output("ae")
    kill_when(tmp_path / "a", "ae", sets, lambda: len(list(ckpts.glob("ckpt-*.pt"))) >= 2)
    saved = sorted(int(p.stem.split("-")[1]) for p in ckpts.glob("ckpt-*.pt"))
    vegan_run(tmp_path / "a", "ae", sets)
    info = m.done_info("ae")
    assert info["resumed_from"] is not None and info["resumed_from"] >= saved[-2]
    vegan_run(tmp_path / "b", "ae", sets)  # uninterrupted reference
    a = torch.load(tmp_path / "a" / m.output("ae") / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / m.output("ae") / "model.pt", weights_only=False)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_kill_during_latent_extraction_never_rewrites_finished_chunks(tmp_path):
    sets = ["data.name=mnist", "data.limit=30000", "ae.steps=20", "latents.chunk_rows=500", "latents.batch_size=100"]
    run_dir = tmp_path / "a"
    vegan_run(run_dir, "ae", sets)
    m = Manifest(Storage(str(run_dir)), _cfg(sets))
    complete = run_dir / m.output("latents") / "complete" / "c"
    kill_when(run_dir, "latents", sets, lambda: len(finished_chunks(complete)) >= 5)
    codes_dir = run_dir / m.output("latents") / "codes" / "c"  # chunk files: c/<row chunk>/0
    finished = {p: p.stat().st_mtime_ns for p in codes_dir.rglob("*") if p.is_file() and p.name.isdigit()}
    n_done = len(finished_chunks(complete))
    assert 5 <= n_done < 60
    vegan_run(run_dir, "latents", sets)
    info = m.done_info("latents")
    assert info["chunks_skipped"] >= n_done - 1 and info["chunks_written"] + info["chunks_skipped"] == 60
    for p, mtime in finished.items():
        if p.stat().st_mtime_ns != mtime:
            chunk = int(p.relative_to(codes_dir).parts[0])
            assert chunk >= n_done, f"finished chunk {p} was rewritten"
    run = Run(_cfg(sets), str(run_dir), progress=False)
    with torch.no_grad():
        expected = run.model.encode(run.dataset.data[:2000]).numpy()
    np.testing.assert_allclose(run.codes[:2000], expected, rtol=1e-4, atol=1e-4)


def test_kill_during_ot_solve_ends_with_the_same_potential(tmp_path, tiny_upstream):
    sets = ["ot.max_iter=30", "ot.checkpoint_every=5", "ot.tol=0.01", "ot.max_samples=65536", "ot.eval_samples=65536"]
    for run in "ab":
        shutil.copytree(tiny_upstream, tmp_path / run)
    m = Manifest(Storage(str(tmp_path / "a")), _cfg(sets))
    assert m.is_done("latents") and not m.is_done("ot")  # a new OT key on the reused codes
    ckpts = tmp_path / "a" / m.output("ot")
    kill_when(tmp_path / "a", "ot", sets, lambda: len(list(ckpts.glob("ckpt-*.pt"))) >= 2)
    vegan_run(tmp_path / "a", "ot", sets)
    vegan_run(tmp_path / "b", "ot", sets)
    from vegan.ot import load_result

    ha = load_result(Storage(str(tmp_path / "a")).sub(m.output("ot"))).h
    hb = load_result(Storage(str(tmp_path / "b")).sub(m.output("ot"))).h
    np.testing.assert_allclose(ha, hb, atol=1e-6)


def test_kill_during_gan_finetuning_resumes(tmp_path, tiny_upstream):
    sets = ["gan.steps=100", "gan.checkpoint_every=20"]
    for run in "ab":
        shutil.copytree(tiny_upstream, tmp_path / run)
    m = Manifest(Storage(str(tmp_path / "a")), _cfg(sets))
    assert m.is_done("generate")
    ckpts = tmp_path / "a" / m.output("gan")
    kill_when(tmp_path / "a", "gan", sets, lambda: len(list(ckpts.glob("ckpt-*.pt"))) >= 2)
    assert not m.is_done("gan")
    vegan_run(tmp_path / "a", "gan", sets)
    vegan_run(tmp_path / "b", "gan", sets)
    a = torch.load(tmp_path / "a" / m.output("gan") / "generator.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / m.output("gan") / "generator.pt", weights_only=False)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


# ----------------------------------------------------- SIGTERM and SIGKILL through Prefect
PREFECT_RUN = [sys.executable, "-m", "cli", "run", "--quiet", "--preset", "tiny"]


def session_processes(sid: int) -> list[str]:
    """``pid command`` of every live process in session ``sid`` (read from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = stat.with_name("cmdline").read_bytes().replace(b"\0", b" ")[:160].decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: session id; Z: zombie
            out.append(f"{stat.parent.name} {cmdline}")
    return out


def start(args: list[str], storage: Path, sets: list[str], log: Path) -> subprocess.Popen:
    cmd = [*args, "--storage", str(storage), *[a for s in sets for a in ("--set", s)]]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(ready, proc: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the signal point (rc {proc.returncode}): {log.read_text()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the signal point never came")
        time.sleep(0.05)


def sigterm(proc: subprocess.Popen, log: Path) -> float:
    """SIGTERM the ``vegan run`` process only (as a scheduler does); seconds until it exited."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running 30 s after SIGTERM: {log.read_text()[-3000:]}")
    return time.monotonic() - t0


def test_sigterm_in_any_stage_stops_the_run_and_a_rerun_resumes(tmp_path):
    """Trainer (ae) and non-trainer (ot) stages, through Prefect and without it: exit 143 within 10 s,
    stage marked interrupted with its checkpoint written, no retry, no process left; reruns resume."""
    sets = [
        "ae.steps=150",
        "ae.checkpoint_every=5",
        "ot.max_iter=50",  # long enough to be interrupted twice, short enough to finish
        "ot.tol=0.0001",
        "ot.checkpoint_every=5",
        "ot.n_samples=32768",
        "ot.max_samples=32768",
    ]
    run_dir = tmp_path / "run"
    m = Manifest(Storage(str(run_dir)), _cfg(sets))
    ae_ckpts, ot_ckpts = run_dir / m.output("ae"), run_dir / m.output("ot")

    def interrupted(args, ready, stage, name):
        log = tmp_path / f"{name}.log"
        proc = start([*args, "--until", "ot"], run_dir, sets, log)
        wait_for(ready, proc, log)
        seconds = sigterm(proc, log)
        text = log.read_text()
        assert proc.returncode == 143, text[-3000:]
        assert seconds < 10, seconds
        assert "interrupted (SIGTERM): rerun the same command to resume" in text
        assert "Retry 1/1" not in text  # retries are for failures
        assert m.status()[stage]["status"] == "interrupted"
        assert not (run_dir / "lock.json").exists()
        deadline = time.monotonic() + 10
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(proc.pid) == []  # the temporary Prefect server went with it

    interrupted(PREFECT_RUN, lambda: len(list(ae_ckpts.glob("ckpt-*.pt"))) >= 1, "ae", "ae-prefect")
    assert list(ae_ckpts.glob("ckpt-*.pt"))  # the checkpoint of the interrupted training
    interrupted(PREFECT_RUN, lambda: len(list(ot_ckpts.glob("ckpt-*.pt"))) >= 1, "ot", "ot-prefect")
    assert m.done_info("ae")["resumed_from"] is not None  # the second run resumed the training
    first = {p.name for p in ot_ckpts.glob("ckpt-*.pt")}
    interrupted(VEGAN, lambda: {p.name for p in ot_ckpts.glob("ckpt-*.pt")} - first, "ot", "ot-direct")
    vegan_run(run_dir, "ot", sets)
    assert m.is_done("ot")


def test_sigkill_leaves_no_prefect_server_behind(tmp_path):
    """``vegan run`` starts its own temporary Prefect server; killing the run kills the server."""
    log = tmp_path / "run.log"
    run_dir = tmp_path / "run"
    sets = ["ae.steps=100000", "ae.checkpoint_every=10"]
    ckpts = run_dir / Manifest(Storage(str(run_dir)), _cfg(sets)).output("ae")
    proc = start([*PREFECT_RUN, "--until", "ae"], run_dir, sets, log)
    wait_for(lambda: len(list(ckpts.glob("ckpt-*.pt"))) >= 1, proc, log)
    members = session_processes(proc.pid)
    assert any("uvicorn" in p for p in members), members  # the server, a child of the run
    os.kill(proc.pid, signal.SIGKILL)  # the run only: its children are on their own now
    proc.wait()
    deadline = time.monotonic() + 10
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(proc.pid) == []
