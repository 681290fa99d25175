import numpy as np
import pytest
import torch
import zarr

from vegan.latents import LatentError, extract_latents, load_codes
from vegan.storage import Storage

W = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))


def encode(x):
    return x.flatten(1) @ W


def _data(n=1000):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(n) % 10


def test_extract_matches_direct_encoding(tmp_path):
    x, y = _data()
    store = Storage(str(tmp_path)).zarr_store("latents/a.zarr")
    info = extract_latents(encode, x, store, y, chunk_rows=300, batch_size=64, progress=False)
    assert info["chunks"] == 4 and info["chunks_written"] == 4
    codes = load_codes(store, expected_dim=5)
    np.testing.assert_allclose(codes, encode(x).numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(zarr.open_group(store, mode="r")["labels"][:], y.numpy())


def test_resume_skips_finished_chunks_and_never_rewrites_them(tmp_path):
    x, y = _data()
    store = Storage(str(tmp_path)).zarr_store("l.zarr")
    calls = {"n": 0}

    def crashing(batch):
        calls["n"] += 1
        if calls["n"] > 2:  # call 1 probes the code size, call 2 encodes chunk 0, call 3 dies
            raise KeyboardInterrupt("killed")
        return encode(batch)

    with pytest.raises(KeyboardInterrupt):
        extract_latents(crashing, x, store, y, chunk_rows=300, batch_size=300, progress=False)
    chunk_files = sorted((tmp_path / "l.zarr" / "codes").rglob("*"))
    before = {p: p.stat().st_mtime_ns for p in chunk_files if p.is_file()}
    assert before, "the first chunk must be on disk"
    with pytest.raises(LatentError, match="incomplete"):
        load_codes(store)
    info = extract_latents(encode, x, store, y, chunk_rows=300, batch_size=300, progress=False)
    assert info["chunks_skipped"] == 1 and info["chunks_written"] == 3
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime, f"finished chunk {p} was rewritten"
    np.testing.assert_allclose(load_codes(store), encode(x).numpy(), rtol=1e-5, atol=1e-5)
    again = extract_latents(encode, x, store, y, chunk_rows=300, batch_size=300, progress=False)
    assert again["chunks_written"] == 0


def test_nan_codes_and_dimension_mismatch_are_clear(tmp_path):
    x, _ = _data(100)
    st = Storage(str(tmp_path))
    with pytest.raises(LatentError, match="NaN/inf codes for rows 0..100"):
        extract_latents(lambda b: encode(b) * float("nan"), x, st.zarr_store("bad.zarr"), progress=False)
    extract_latents(encode, x, st.zarr_store("ok.zarr"), progress=False)
    with pytest.raises(LatentError, match="dimension mismatch: store has 5, model expects 8"):
        load_codes(st.zarr_store("ok.zarr"), expected_dim=8)
    with pytest.raises(LatentError, match="expected \\(100, 5\\)"):
        extract_latents(encode, x, st.zarr_store("ok.zarr"), chunk_rows=7, progress=False)


def test_extract_to_s3(s3_bucket):
    url, opts = s3_bucket
    x, y = _data(500)
    st = Storage(f"{url}/run", opts)
    info = extract_latents(encode, x, st.zarr_store("latents/k.zarr"), y, chunk_rows=200, progress=False)
    assert info["chunks_written"] == 3
    np.testing.assert_allclose(
        load_codes(st.zarr_store("latents/k.zarr", read_only=True)), encode(x).numpy(), rtol=1e-5, atol=1e-5
    )


def _saved_encoder(tmp_path, shape):
    """A real (untrained) MLP autoencoder saved the way the ae stage saves it."""
    from vegan.config import AEConfig
    from vegan.models import build_model

    cfg = AEConfig(arch="mlp", latent_dim=4, width=16)
    model = build_model(cfg, shape).eval()
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "shape": list(shape), "config": cfg.model_dump()}, path)
    return model, str(path)


def test_dask_extraction_from_zarr_dataset_writes_chunks_on_workers(tmp_path):
    from distributed import Client

    from vegan.cluster import local_cluster
    from vegan.data import ZarrDataset, ingest
    from vegan.latents import EncoderRef, code_stats

    x = np.random.default_rng(0).integers(0, 256, size=(700, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(700) % 3)
    ingest(str(tmp_path / "x.npz"), str(tmp_path / "x.zarr"), chunk_rows=128, progress=False)
    ds = ZarrDataset(str(tmp_path / "x.zarr"))
    model, path = _saved_encoder(tmp_path, ds.shape)
    with torch.no_grad():
        want = model.encode(torch.from_numpy(x).float() / 255).numpy()
    store = str(tmp_path / "codes.zarr")
    with (
        local_cluster(2, memory_limit="1GiB", resources={"GPU": 1}) as cluster,
        Client(cluster) as client,
    ):
        info = extract_latents(
            EncoderRef(path, device="cpu"),
            ds,
            store,
            chunk_rows=200,
            batch_size=64,
            progress=False,
            client=client,
            resources={"GPU": 1},
        )
        assert info == {"n": 700, "dim": 4, "chunks": 4, "chunks_written": 4, "chunks_skipped": 0}
        # Every chunk was encoded on a worker (the driver never loaded the encoder).
        import importlib

        from vegan.latents import _ENCODERS

        loaded = client.run(lambda: len(importlib.import_module("vegan.latents")._ENCODERS))
        assert sum(loaded.values()) >= 1 and not _ENCODERS
        stats_dask = code_stats(store, "ball", client=client)
        again = extract_latents(
            EncoderRef(path, device="cpu"), ds, store, chunk_rows=200, progress=False, client=client
        )
        assert again["chunks_written"] == 0 and again["chunks_skipped"] == 4
    np.testing.assert_allclose(load_codes(store, expected_dim=4), want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(zarr.open_group(store, mode="r")["labels"][:], np.arange(700) % 3)
    # Without a client the same per-chunk function runs here, on the lazy dataset.
    local = str(tmp_path / "local.zarr")
    extract_latents(model.encode, ds, local, chunk_rows=200, batch_size=64, progress=False)
    np.testing.assert_allclose(load_codes(local), want, rtol=1e-5, atol=1e-5)
    from vegan.ot.problem import fit_scaling

    center, scale = fit_scaling(load_codes(store), "ball")
    np.testing.assert_allclose(stats_dask.center, center, rtol=1e-12, atol=1e-12)
    assert stats_dask.scale == pytest.approx(scale, rel=1e-12)


def test_code_stats_streams_what_fit_scaling_computes(tmp_path):
    from vegan.latents import code_stats
    from vegan.ot.problem import fit_scaling

    x, y = _data(1000)
    store = str(tmp_path / "c.zarr")
    extract_latents(lambda b: encode(b) * 3 + 1, x, store, y, chunk_rows=128, progress=False)
    codes = load_codes(store)
    for source in ("cube", "ball"):
        st = code_stats(store, source)
        center, scale = fit_scaling(codes, source)
        assert (st.n, st.dim, st.source) == (1000, 5, source)
        np.testing.assert_allclose(st.center, center, rtol=1e-12, atol=1e-12)
        assert st.scale == pytest.approx(scale, rel=1e-12)
    np.testing.assert_array_equal(st.lo, codes.min(0))
    with pytest.raises(ValueError, match="'cube' or 'ball'"):
        code_stats(store, "sphere")
    zarr.open_group(store, mode="r+")["complete"][2] = False
    with pytest.raises(LatentError, match="incomplete"):
        code_stats(store)


def test_a_worker_killed_mid_extraction_loses_nothing(tmp_path):
    """Kill a worker process while chunks are in flight: its tasks rerun elsewhere, every chunk completes."""
    import os
    import threading
    import time

    from distributed import Client

    from vegan.cluster import local_cluster
    from vegan.data import ZarrDataset, ingest

    x = np.random.default_rng(1).integers(0, 256, size=(480, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", x=x)
    ingest(str(tmp_path / "x.npz"), str(tmp_path / "x.zarr"), chunk_rows=60, progress=False)
    ds = ZarrDataset(str(tmp_path / "x.zarr"))
    w = W.clone()

    def slow_encode(batch):
        time.sleep(0.4)
        return batch.flatten(1) @ w

    store = str(tmp_path / "codes.zarr")
    result = {}
    with (
        local_cluster(2, memory_limit="1GiB") as cluster,
        Client(cluster) as client,
    ):
        job = threading.Thread(
            target=lambda: result.update(
                extract_latents(slow_encode, ds, store, chunk_rows=60, batch_size=60, progress=False, client=client)
            )
        )
        job.start()
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until some, not all, chunks are done
            try:
                done = int(zarr.open_group(store, mode="r")["complete"][:].sum())
            except Exception:  # noqa: BLE001 - the store is not created yet
                done = 0
            if done >= 1:
                break
            time.sleep(0.05)
        victim = sorted(client.scheduler_info()["workers"])[0]
        client.run(os._exit, 1, workers=[victim], on_error="ignore")  # the process dies at once, mid-task
        job.join(timeout=120)
    assert not job.is_alive()
    assert 1 <= done < 8
    assert result["chunks"] == 8 and result["chunks_written"] + result["chunks_skipped"] == 8
    np.testing.assert_allclose(
        load_codes(store), (torch.from_numpy(x).float() / 255).flatten(1).numpy() @ W.numpy(), rtol=1e-5, atol=1e-5
    )
