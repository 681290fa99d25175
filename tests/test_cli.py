import json
import subprocess
import sys

from vegan.cli import main
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
    assert main(["run", "--preset", "tiny", "--storage", str(tmp_path), "--set", "ot.lr=fast"]) == 1
    assert "invalid config" in capsys.readouterr().err
    assert main(["run", "--preset", "tiny", "--no-prefect", "--storage", "nosuch://x"]) == 1
    assert "cannot open storage URL" in capsys.readouterr().err
    code = main(["run", "--preset", "tiny", "--no-prefect", "--storage", str(tmp_path / "r"),
                 "--set", "data.name=/no/such/data.npz"])
    assert code == 1 and "dataset not found: /no/such/data.npz" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "vegan.cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--storage" in out.stdout and "--preset" in out.stdout
