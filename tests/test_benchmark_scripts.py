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
