import json
import os
import subprocess
import sys
import time

import pytest
from prefect_server import free_port

from cli.main import main
from vegan.config import load_config
from vegan.manifest import Manifest
from vegan.storage import Storage


def test_status_reads_the_manifest(tmp_path, capsys):
    cfg = load_config("tiny")
    m = Manifest(Storage(str(tmp_path)), cfg)
    m.mark_done("ae", {"steps": 1})
    m.set_status("latents", "failed", error="disk full")
    assert main(["status", "--storage", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["ae"]["status"] == "done" and status["latents"]["status"] == "failed"
    assert status["ot"] == {"status": "pending", "key": m.keys["ot"], "output": str(tmp_path / m.output("ot"))}
    assert main(["status", "--storage", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "error: disk full" in text and m.keys["ae"] in text


def test_status_of_a_missing_run(tmp_path, capsys):
    assert main(["status", "--storage", str(tmp_path / "nothing")]) == 1
    assert "manifest.json not found" in capsys.readouterr().err


def test_bad_inputs_fail_before_any_work(tmp_path, capsys):
    assert main(["run", "--preset", "tiny", "--storage", str(tmp_path), "--set", "ot.tol=fast"]) == 1
    assert "invalid config: ot.tol: Input should be a valid number" in capsys.readouterr().err
    assert main(["run", "--preset", "tiny", "--no-prefect", "--storage", "nosuch://x"]) == 1
    assert "cannot open storage URL" in capsys.readouterr().err
    code = main(
        [
            "run",
            "--preset",
            "tiny",
            "--no-prefect",
            "--storage",
            str(tmp_path / "r"),
            "--set",
            "data.name=/no/such/data.npz",
        ]
    )
    assert code == 1 and "dataset not found: /no/such/data.npz" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--storage" in out.stdout and "--preset" in out.stdout
    assert "{ae,latents,ot,generate,gan,eval}" in out.stdout  # --until choices: the registry's order


# ------------------------------------------- bad input: one line, before anything starts
def _png_folder(path):
    """Unlabeled images: a folder of PNGs (no class labels)."""
    import numpy as np
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path / f"{i}.png")
    return path


BAD_INPUTS = {
    "unknown preset": (["--preset", "nope"], "invalid choice: 'nope'"),
    "missing config": (["--config", "{tmp}/missing.yaml"], "config file not found: {tmp}/missing.yaml"),
    "broken yaml": (["--config", "{tmp}/broken.yaml"], "broken.yaml is not valid YAML"),
    "retired ot.dask": (["--preset", "tiny", "--set", "ot.dask=local"], "ot.dask is retired: set cluster.address"),
    "retired ot.n_workers": (
        ["--config", "{tmp}/old.yaml"],
        "ot.n_workers is retired: set cluster.n_workers",
    ),
    "wrong-type --set": (["--preset", "tiny", "--set", "ae.steps=many"], "invalid config: ae.steps: Input should be"),
    "missing dataset": (["--preset", "tiny", "--set", "data.name={tmp}/none.npz"], "dataset not found: {tmp}/none.npz"),
    "labels needed": (
        ["--preset", "tiny", "--set", "data.name={tmp}/pngs", "--set", "eval.extractor=domain"],
        "eval.extractor 'domain' trains a classifier on the dataset's labels, but this dataset has none",
    ),
    "unreachable s3": (
        ["--preset", "tiny", "--storage", "s3://no-such-bucket/run"],
        "cannot write to storage s3://no-such-bucket/run",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_in_one_line_before_any_stage(case, tmp_path):
    args, expected = BAD_INPUTS[case]
    (tmp_path / "broken.yaml").write_text("ae:\n  steps: [1\n")
    (tmp_path / "old.yaml").write_text("ot:\n  n_workers: 4\n")
    _png_folder(tmp_path / "pngs")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there once it is free
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    args = [a.format(tmp=tmp_path) for a in args]
    if "--storage" not in args:
        args += ["--storage", str(tmp_path / "run")]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "run", *args], capture_output=True, text=True, env=env, timeout=120
    )
    seconds = time.monotonic() - t0
    assert proc.returncode in (1, 2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected.format(tmp=tmp_path) in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and seconds < 60
    assert not (tmp_path / "run" / "manifest.json").exists()  # no stage started


def test_missing_bucket_on_a_live_endpoint(s3_endpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--preset", "tiny", "--storage", "s3://no-such-bucket/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert (
        "cannot write to storage s3://no-such-bucket/run" in lines[0] and "specified bucket does not exist" in lines[0]
    )


def test_run_creates_a_missing_prefect_home(tmp_path):
    """A fresh clone has no PREFECT_HOME folder yet: the temporary server's database must still open."""
    home = tmp_path / "not" / "yet" / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    args = ["run", "--preset", "tiny", "--until", "ae", "--quiet", "--storage", str(tmp_path / "run")]
    out = subprocess.run(
        [sys.executable, "-m", "cli", *args, "--set", "ae.steps=5"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (home / "prefect.db").is_file()
