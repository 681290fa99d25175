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
    assert "ae-ot" in eval_dir.read_json("metrics.json")["sets"]
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


def test_tiny_pipeline_on_s3_with_a_local_cluster_through_eval_keeps_secrets_out_of_task_graphs(s3_bucket, monkeypatch):
    """Workers open the run's Zarr stores in S3 themselves (latents written, codes read, generated codes
    written, sets made and scored) with credentials from their environment: the bytes of every task graph
    this process pickles for the scheduler are scanned for the secret."""
    import os
    import pickle

    import distributed.client
    import numpy as np
    import s3fs
    import zarr

    from vegan.pipeline import Run

    graphs: list[bytes] = []
    real = distributed.client.serialize

    def recording(*args, **kwargs):  # the client's own serializer, observed: what goes to the scheduler
        header, frames = real(*args, **kwargs)
        graphs.append(pickle.dumps(header) + b"".join(bytes(f) for f in frames))
        return header, frames

    monkeypatch.setattr(distributed.client, "serialize", recording)
    url, opts = s3_bucket
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    # The scan can see a secret: a filesystem given keys explicitly carries them when pickled.
    assert secret in pickle.dumps(s3fs.S3FileSystem(key="k", secret=secret.decode(), **opts))
    sets = [*SMALL, "cluster.address=local", "cluster.n_workers=2", "latents.chunk_rows=256"]
    cfg = load_config("tiny", overrides=sets)
    run_url = f"{url}/runs/cluster"
    first = run_pipeline(cfg, Storage(run_url, opts), progress=False)
    assert set(first) == {"ae", "latents", "ot", "generate", "gan", "eval"}
    assert not any(r["reused"] for r in first.values())
    blob = b"".join(graphs)
    assert len(graphs) > 10 and url.removeprefix("s3://").encode() in blob  # graphs name the bucket...
    assert secret not in blob and b"AWS_SECRET" not in blob  # ...never the credentials
    st = Storage(run_url, opts)
    m = Manifest(st, cfg)
    assert m.done_info("latents")["chunks_written"] == m.done_info("latents")["chunks"] > 1
    assert m.done_info("ot")["mode"] != "local" and m.done_info("eval")["cluster"].startswith("tcp://")
    assert "ae-ot" in st.sub(m.output("eval")).read_json("metrics.json")["sets"]
    run = Run(cfg, Storage(run_url, opts), progress=False)
    gen = zarr.open_group(run.zarr_store("generate", read_only=True), mode="r")
    codes = np.asarray(gen["codes"][:])
    assert codes.shape == (128, cfg.ae.latent_dim) and np.isfinite(codes).all()
    again = run_pipeline(cfg, Storage(run_url, opts), progress=False)
    assert all(r["reused"] for r in again.values())
