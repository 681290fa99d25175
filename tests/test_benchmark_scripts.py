"""The benchmark scripts whose figures the docs quote still run, at a tiny size."""

import json

import pytest


@pytest.mark.slow
def test_ot_tolerance_study_solves_each_tolerance_from_the_last(tmp_path, benchmark_script):
    """A real tiny run (ae and latents), then the study: each tolerance verified, loosest first."""
    from vegan.config import load_config
    from vegan.pipeline import run_pipeline

    overrides = ["ae.steps=40"]
    run_pipeline(load_config("tiny", overrides=overrides), str(tmp_path / "run"), until="latents", progress=False)
    out, png = tmp_path / "tol.json", tmp_path / "tol.png"
    args = ["--preset", "tiny", "--storage", str(tmp_path / "run"), "--tols", "0.5,1", "--n-samples", "64",
            "--subset", "300", "--json", str(out), "--png", str(png), "--quiet"]  # fmt: skip
    for o in overrides:
        args += ["--set", o]
    assert benchmark_script("ot_tolerance").main(args) == 0
    table = json.loads(out.read_text())
    assert table["n_codes"] == 300 and [r["tol"] for r in table["rows"]] == [1.0, 0.5]
    for r in table["rows"]:
        assert r["converged"] and r["max_rel_error"] <= r["tol"] and 0 < r["l1_rel_error"] < r["max_rel_error"]
        assert r["fid"] == r["fid"] and r["fid"] >= 0
    assert png.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="--subset"):
        benchmark_script("ot_tolerance").main([*args, "--subset", "100000"])  # the last --subset wins


def test_iteration_rate_times_the_kernel_the_evaluator_and_a_step_on_the_same_samples(benchmark_script, capsys):
    """A tiny real run: three positive CPU times on one sample set, and the ratios built from them."""
    out = benchmark_script("ot_iteration_rate").main(
        ["--problem", "gmm:300:4", "--samples", "16384", "--warmup", "2", "--repeats", "1", "--threads", "1", "--json"]
    )
    assert out["samples"] == 16384 and out["warmup_iterations"] == 2
    assert all(out[f"{k}_s"] > 0 for k in ("kernel", "evaluate", "step"))
    assert out["step_frac_of_kernel"] == out["kernel_s"] / out["step_s"]
    assert 0 < out["margin_pair_share"] < 1
    assert json.loads(capsys.readouterr().out)["step_s"] == out["step_s"]


@pytest.mark.slow
def test_ae_capacity_trains_each_variant_once_and_scores_its_reconstructions(tmp_path, benchmark_script):
    """Two real tiny autoencoders, scored; a rerun finds both trained (their done records untouched)."""
    out, png = tmp_path / "cap.json", tmp_path / "cap.png"
    args = ["--preset", "tiny", "--storage", str(tmp_path / "study"), "--set", "ae.steps=30",
            "--variant", "ld4:ae.latent_dim=4", "--variant", "ld8:ae.latent_dim=8,ae.width=8",
            "--n-samples", "64", "--json", str(out), "--png", str(png), "--quiet"]  # fmt: skip
    table = benchmark_script("ae_capacity").main(args)
    rows = {r["label"]: r for r in table["rows"]}
    assert (
        rows["ld4"]["ae"]["latent_dim"] == 4 and rows["ld8"]["ae"] | {"latent_dim": 8, "width": 8} == rows["ld8"]["ae"]
    )
    assert rows["ld4"]["ae_key"] != rows["ld8"]["ae_key"]
    for r in rows.values():
        assert r["n_samples"] == 64 and r["fid"] == r["fid"] and r["fid"] >= 0 and r["final_loss"] > 0
    assert json.loads(out.read_text())["rows"] == table["rows"] and png.read_bytes().startswith(b"\x89PNG")
    done = sorted((tmp_path / "study").glob("*/done/ae-*.json"))
    assert len(done) == 2
    before = [p.read_bytes() for p in done]
    again = benchmark_script("ae_capacity").main(args)
    assert [p.read_bytes() for p in done] == before  # found trained, not trained again
    assert [r["fid"] for r in again["rows"]] == pytest.approx([r["fid"] for r in table["rows"]], rel=1e-4)
    with pytest.raises(SystemExit):
        benchmark_script("ae_capacity").main([*args, "--variant", "ld4:ae.latent_dim=5"])  # labels must differ
    with pytest.raises(SystemExit):
        benchmark_script("ae_capacity").main([*args, "--variant", "no-colon"])
    with pytest.raises(SystemExit, match=r"variant bad: (?s:.*)nosuch"):  # one line naming the variant, no traceback
        benchmark_script("ae_capacity").main([*args, "--variant", "bad:ae.nosuch=1"])
