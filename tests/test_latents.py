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
    np.testing.assert_allclose(load_codes(st.zarr_store("latents/k.zarr", read_only=True)), encode(x).numpy(),
                               rtol=1e-5, atol=1e-5)
