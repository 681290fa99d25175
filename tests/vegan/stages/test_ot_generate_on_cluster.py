"""The ot and generate stages on a real LocalCluster: the driver never loads the codes, and the
results match the in-process run of the same config."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from zarr_guard import forbid_code_reads

from vegan.config import load_config
from vegan.ot import load_result
from vegan.pipeline import run_pipeline
from vegan.stages.context import Run

SETS = [
    "ot.max_iter=8",
    "ot.n_samples=8192",
    "ot.max_samples=16384",
    "ot.eval_samples=16384",
    "generate.centroid_samples=8192",
    "generate.n_samples=300",
]


def _forbid_codes_on_the_driver(monkeypatch, d: int) -> None:
    def refuse(self):
        raise AssertionError("Run.codes was called on the driver")

    monkeypatch.setattr(Run, "codes", property(refuse))
    forbid_code_reads(monkeypatch, d)


@pytest.mark.slow
def test_ot_and_generate_on_a_cluster_never_hold_codes_and_match_in_process(tmp_path, monkeypatch):
    here = load_config("tiny", overrides=SETS)
    run_pipeline(here, str(tmp_path / "a"), until="latents", progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same codes for both runs

    local = run_pipeline(here, str(tmp_path / "a"), until="generate", progress=False)
    # Workers peak at ~620 MiB here (torch, the decoder, generation); 2 GiB leaves room on CPUs whose
    # torch takes more (the nanny restarts a worker at 95 % of its limit).
    on_cluster = load_config(
        "tiny", overrides=[*SETS, "cluster.address=local", "cluster.n_workers=2", "cluster.memory_limit=2GiB"]
    )
    with monkeypatch.context() as m:
        _forbid_codes_on_the_driver(m, here.ae.latent_dim)
        info = run_pipeline(on_cluster, str(tmp_path / "b"), until="generate", progress=False)
        again = run_pipeline(on_cluster, str(tmp_path / "b"), until="generate", progress=False)
    assert not info["ot"]["reused"] and not info["generate"]["reused"]
    assert again["ot"]["reused"] and again["generate"]["reused"]
    # The stage's info says where the cells were counted (ot.mode=auto: tiny codes fit every worker).
    assert {k: info["ot"][k] for k in ("mode", "shards", "workers")} == {"mode": "samples", "shards": 1, "workers": 2}
    assert again["ot"]["mode"] == "samples" and local["ot"]["mode"] == "local"

    a, b = Run(here, str(tmp_path / "a")), Run(on_cluster, str(tmp_path / "b"))
    ra, rb = load_result(a.dir("ot")), load_result(b.dir("ot"))
    # Same blocks, same scaled rows, same slices: the same trajectory (bitwise on one machine).
    np.testing.assert_allclose(rb.h, ra.h, rtol=0, atol=1e-9)
    assert rb.iterations == ra.iterations == 8
    ga = zarr.open_group(a.zarr_store("generate", read_only=True), mode="r")
    gb = zarr.open_group(b.zarr_store("generate", read_only=True), mode="r")
    np.testing.assert_allclose(gb["codes"][:], ga["codes"][:], rtol=0, atol=1e-5)
    assert gb["codes"].shape == (300, here.ae.latent_dim) and bool(np.all(gb["complete"][:]))
    assert (gb["cells"][:] == ga["cells"][:]).mean() > 0.99
