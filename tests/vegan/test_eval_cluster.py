"""The eval stage on a uint8 Zarr dataset with a real LocalCluster: no dataset on the driver."""

from __future__ import annotations

import numpy as np
import pytest

from vegan.config import load_config
from vegan.data import DatasetError, ZarrDataset, ingest, zarrset
from vegan.evaluation import evaluate_run
from vegan.pipeline import run_pipeline
from vegan.stages.context import Run
from vegan.storage import Storage

SMALL = ["ae.steps=40", "ot.max_iter=30", "gan.steps=10", "eval.n_samples=128", "generate.n_samples=128",
         "eval.domain_steps=60"]  # fmt: skip


@pytest.mark.slow
def test_eval_of_a_zarr_dataset_on_a_local_cluster_never_materialises_it(tmp_path, monkeypatch):
    """Upstream stages run first; then the driver refuses ``ZarrDataset.data`` at any size (the real
    in-memory limit, lowered to 0 bytes in this process) and eval runs on 2 worker processes, then
    in-process: both finish, and give the same metrics."""
    url = str(tmp_path / "digits.zarr")
    ingest("digits", url, chunk_rows=128, dtype="uint8", progress=False)  # 1437 uint8 images in 12 chunks
    assert ZarrDataset(url).dtype == np.uint8
    cfg = load_config(
        "tiny",
        overrides=SMALL + [f"data.name={url}", "data.limit=1100", "cluster.address=local", "cluster.n_workers=2"],
    )
    store = Storage(str(tmp_path / "run"))
    run_pipeline(cfg, store, until="gan", progress=False)

    monkeypatch.setattr(zarrset, "MAX_IN_MEMORY_BYTES", 0)
    with pytest.raises(DatasetError, match="over the in-memory limit"):  # the refusal is armed
        _ = ZarrDataset(url).data
    info = run_pipeline(cfg, store, progress=False)["eval"]
    assert info["n_reference"] == 128  # held-out rows 1100..1355, beyond the training limit
    assert info["extractor"] == "vegan-domain"
    assert set(info["metrics"]) == {"reconstructions", "ae-ot", "ae-ot-gan", "gaussian-fit", "gaussian-noise"}
    text = Storage(info["report"].rsplit("/", 1)[0]).read_text("report.md")
    assert "none of them held-out examples" in text and "Caution" not in text

    here = evaluate_run(Run(cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"address": "none"})}),
                            store, progress=False))  # fmt: skip
    for name, m in info["metrics"].items():
        for key in ("fid", "kid_mean", "precision", "recall", "density", "coverage"):
            assert here["metrics"][name][key] == pytest.approx(m[key], rel=1e-4, abs=1e-6), (name, key)
