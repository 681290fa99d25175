"""The whole pipeline with its run folder in S3 (a real moto server on loopback)."""

import pytest

from vegan.config import load_config
from vegan.manifest import Manifest, RunLockedError
from vegan.pipeline import run_pipeline
from vegan.storage import Storage

pytestmark = pytest.mark.slow

SMALL = ["ae.steps=40", "ot.max_iter=30", "gan.steps=10", "eval.n_samples=128", "generate.n_samples=128"]


def test_tiny_pipeline_on_s3_then_rerun_reuses_everything(s3_bucket):
    url, opts = s3_bucket
    cfg = load_config("tiny", overrides=SMALL)
    run_url = f"{url}/runs/tiny"
    first = run_pipeline(cfg, Storage(run_url, opts), progress=False)
    assert all(not r["reused"] for r in first.values())
    st = Storage(run_url, opts)
    status = Manifest(st, cfg).status()
    assert all(e["status"] == "done" and e["output"].startswith("s3://") for e in status.values())
    eval_dir = st.sub(Manifest(st, cfg).output("eval"))
    assert "ae-ot" in eval_dir.read_json("metrics.json")
    assert eval_dir.read_bytes("samples-ae-ot.png").startswith(b"\x89PNG")
    second = run_pipeline(cfg, Storage(run_url, opts), progress=False)
    assert all(r["reused"] for r in second.values())
    assert not st.exists("lock.json")


def test_second_writer_is_refused_while_a_run_holds_the_folder(s3_bucket):
    from vegan.manifest import RunLock

    url, opts = s3_bucket
    st = Storage(f"{url}/runs/locked", opts)
    with RunLock(st):
        with pytest.raises(RunLockedError, match="another run"):
            run_pipeline(load_config("tiny", overrides=SMALL), Storage(f"{url}/runs/locked", opts), progress=False)


def test_tiny_pipeline_on_s3_with_a_local_cluster_until_generate(s3_bucket):
    """Workers open the run's Zarr stores in S3 themselves (latents written, codes read, generated codes written)."""
    import numpy as np
    import zarr

    from vegan.pipeline import Run

    url, opts = s3_bucket
    sets = [*SMALL, "cluster.address=local", "cluster.n_workers=2", "latents.chunk_rows=256"]
    cfg = load_config("tiny", overrides=sets)
    run_url = f"{url}/runs/cluster"
    first = run_pipeline(cfg, Storage(run_url, opts), until="generate", progress=False)
    assert set(first) == {"ae", "latents", "ot", "generate"} and not any(r["reused"] for r in first.values())
    st = Storage(run_url, opts)
    m = Manifest(st, cfg)
    assert m.done_info("latents")["chunks_written"] == m.done_info("latents")["chunks"] > 1
    assert m.done_info("ot")["mode"] != "local"
    run = Run(cfg, Storage(run_url, opts), progress=False)
    gen = zarr.open_group(run.zarr_store("generate", read_only=True), mode="r")
    codes = np.asarray(gen["codes"][:])
    assert codes.shape == (128, cfg.ae.latent_dim) and np.isfinite(codes).all()
    again = run_pipeline(cfg, Storage(run_url, opts), until="generate", progress=False)
    assert all(r["reused"] for r in again.values())
