"""benchmarks/gpu_check.py --dry-run: every section of the device check runs on CPU and reports figures.

The device run itself needs a GPU; this keeps its code paths (all but the CUDA kernel branch)
working between device runs, at tiny sizes.
"""

import json
import math

import pytest

EXPECTED = {
    "kernel": ["peak_gflops.float32", "peak_gflops.screened", "peak_gflops.bf16", "float32.gflops",
               "float32.frac_of_same_precision_peak", "float32.slice_4096_gflops", "screened.gflops",
               "screened.frac_of_same_precision_peak", "screened.frac_of_bf16_peak"],
    "ot_solve": ["seconds", "iterations", "seconds_per_iteration", "counting_gflops", "last_rms_rel_error",
                 "projected_check_s"],
    "pipeline": ["inception_images_per_s", "ae_samples_per_s", "stages.ae.seconds", "stages.ot.seconds",
                 "stages.eval.seconds", "fid.ae-ot", "fid.ae-ot-gan"],
    "mixed": ["float32.ae_samples_per_s", "bf16.ae_samples_per_s", "float32.gan_steps_per_s",
              "bf16.gan_steps_per_s", "bf16_ae_speedup", "bf16_gan_speedup"],
}  # fmt: skip


def _get(figures: dict, dotted: str):
    for part in dotted.split("."):
        figures = figures[part]
    return figures


@pytest.mark.slow
def test_dry_run_reports_every_section(tmp_path, monkeypatch, capsys, benchmark_script):
    # No TF-Inception weights, as on the device: the stand-in Inception path runs.
    monkeypatch.setenv("VEGAN_INCEPTION_PATH", str(tmp_path / "no-such-weights.pt"))
    assert benchmark_script("gpu_check").main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# GPU check: **DRY RUN (CPU)**") and md in capsys.readouterr().out
    assert report["dry_run"] and report["environment"]["device"] == "cpu"
    assert list(report["sections"]) == list(EXPECTED)
    for name, keys in EXPECTED.items():
        sec = report["sections"][name]
        assert sec["ok"], (name, sec["error"], sec.get("traceback"), sec["note"])
        for key in keys:
            value = _get(sec["figures"], key)
            assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, (name, key, value)
    k = report["sections"]["kernel"]["figures"]
    assert k["float32"]["agreement_with_float64"] == 1.0 and k["screened"]["agreement_with_float64"] == 1.0
    ot = report["sections"]["ot_solve"]["figures"]
    assert ot["converged"] and ot["verified_max_error"] <= 0.3
    pipe = report["sections"]["pipeline"]["figures"]
    assert all(s["status"] == "done" for s in pipe["stages"].values())
    assert pipe["inception"].startswith("stand-in") and "diagnostic" in pipe["fid_label"]
    mixed = report["sections"]["mixed"]["figures"]
    assert all(mixed[p][f] for p in ("float32", "bf16") for f in ("ae_finite", "gan_finite"))


def test_without_cuda_one_line_error(tmp_path, capsys, benchmark_script):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert benchmark_script("gpu_check").main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CUDA device" in err and "--dry-run" in err
    assert not (tmp_path / "gpu_check.json").exists()
