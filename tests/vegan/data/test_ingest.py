"""Ingestion into chunked uint8 Zarr: real files, real Zarr stores, a real Dask LocalCluster, moto S3."""

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from vegan.config import DataConfig
from vegan.data import DatasetError, StreamBatches, ZarrDataset, ingest, load_dataset, open_dataset


def _images(n, seed=0, size=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size), dtype=np.uint8)


def _folder(root, n_per_class=(5, 4), classes=("cat", "dog"), size=(6, 5)):
    """PNG images in class folders (one nested deeper); returns the arrays in sorted-path order."""
    arrays = {}
    for k, (name, n) in enumerate(zip(classes, n_per_class)):
        for i, img in enumerate(_images(n, seed=k, size=size)):
            sub = root / name / ("deep" if i == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            path = sub / f"{i:03d}.png"
            Image.fromarray(img).save(path)
            arrays[str(path)] = (img, k)
    return [arrays[p] for p in sorted(arrays)]


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from vegan.cluster import local_cluster

    with (
        local_cluster(2, memory_limit="1GiB") as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_folder_ingest_on_dask_with_class_labels_and_idempotent_rerun(tmp_path, client):
    expected = _folder(tmp_path / "src")
    dest = str(tmp_path / "d.zarr")
    info = ingest(str(tmp_path / "src"), dest, chunk_rows=4, client=client, progress=False)
    assert info["chunks"] == 3 and info["chunks_written"] == 3 and info["dtype"] == "uint8"
    ds = ZarrDataset(dest)
    assert len(ds) == 9 and ds.shape == (1, 6, 5) and ds.dtype == np.uint8 and ds.chunk_rows == 4
    assert ds.label_names == ["cat", "dog"]
    assert ds.labels.tolist() == [k for _, k in expected]
    np.testing.assert_array_equal(ds.rows(0, 9)[:, 0], np.stack([a for a, _ in expected]))
    g = zarr.open_group(dest, mode="r")
    assert g["complete"][:].all() and g.attrs["complete"] and g.attrs["source"] == str(tmp_path / "src")
    # Rerun: nothing written, same content hash.
    again = ingest(str(tmp_path / "src"), dest, chunk_rows=4, client=client, progress=False)
    assert again["chunks_written"] == 0 and ZarrDataset(dest).content_hash() == ds.content_hash()
    # Settings changes are refused, never mixed into the store.
    with pytest.raises(DatasetError, match="other settings.*chunk_rows"):
        ingest(str(tmp_path / "src"), dest, chunk_rows=5, progress=False)


def test_corrupt_image_named_then_resume_writes_only_missing_chunks(tmp_path):
    _folder(tmp_path / "src", n_per_class=(6, 6))
    files = sorted((tmp_path / "src").rglob("*.png"))
    good = files[-1].read_bytes()
    files[-1].write_bytes(b"this is not a png")  # lands in the last chunk
    dest = str(tmp_path / "d.zarr")
    with pytest.raises(DatasetError, match=f"cannot read image .*{files[-1].name}"):
        ingest(str(tmp_path / "src"), dest, chunk_rows=5, progress=False)
    with pytest.raises(DatasetError, match="incomplete"):
        ZarrDataset(dest)
    done = zarr.open_group(dest, mode="r")["complete"][:]
    assert done.tolist() == [True, True, False]
    chunk_files = [p for p in (tmp_path / "d.zarr" / "x").rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in chunk_files}
    files[-1].write_bytes(good)
    info = ingest(str(tmp_path / "src"), dest, chunk_rows=5, progress=False)
    assert info["chunks_written"] == 1 and info["chunks_skipped"] == 2
    for p, t in before.items():
        assert p.stat().st_mtime_ns == t, f"finished chunk {p} was rewritten"
    assert len(ZarrDataset(dest)) == 12


def test_mixed_sizes_resize_jpeg_and_no_labels(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    Image.fromarray(_images(1, size=(8, 8))[0]).save(src / "a.png")
    Image.fromarray(_images(1, size=(10, 12))[0]).save(src / "b.png")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(src / "c.jpg")
    with pytest.raises(DatasetError, match=r"b\.png is 12x10 .*a\.png is 8x8.*resize"):
        ingest(str(src), str(tmp_path / "bad.zarr"), chunk_rows=2, progress=False)
    ingest(str(src), str(tmp_path / "ok.zarr"), chunk_rows=2, resize=(7, 6), progress=False)
    ds = ZarrDataset(str(tmp_path / "ok.zarr"))
    assert len(ds) == 3 and ds.shape == (1, 7, 6) and ds.labels is None  # grey first image -> 1 channel


def test_clear_errors_for_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no .png/.jpg/.jpeg images under"):
        ingest(str(tmp_path / "empty"), str(tmp_path / "e.zarr"), progress=False)
    with pytest.raises(DatasetError, match="source not found"):
        ingest(str(tmp_path / "missing"), str(tmp_path / "m.zarr"), progress=False)
    with pytest.raises(DatasetError, match="cannot open source URL 'nope://x/y'"):
        ingest("nope://x/y", str(tmp_path / "u.zarr"), progress=False)
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        ingest("imagenet", str(tmp_path / "i.zarr"), progress=False)
    np.savez(tmp_path / "nan.npz", x=np.full((3, 2), np.nan, np.float32))
    with pytest.raises(DatasetError, match="NaN or infinite"):
        ingest(str(tmp_path / "nan.npz"), str(tmp_path / "n.zarr"), progress=False)
    with pytest.raises(DatasetError, match="cannot open dataset"):
        ZarrDataset(str(tmp_path / "nothing.zarr"))


def test_npz_and_named_datasets_keep_their_values(tmp_path):
    x = _images(10, size=(4, 4))
    np.savez(tmp_path / "u8.npz", x=x, y=np.arange(10))
    ingest(str(tmp_path / "u8.npz"), str(tmp_path / "u8.zarr"), chunk_rows=3, progress=False)
    ds = ZarrDataset(str(tmp_path / "u8.zarr"))
    assert ds.shape == (1, 4, 4) and ds.dtype == np.uint8 and ds.labels.tolist() == list(range(10))
    # MNIST floats are k/255: stored losslessly as uint8; batches give back the very same floats.
    ingest("mnist", str(tmp_path / "mnist.zarr"), split="test", limit=300, chunk_rows=128, progress=False)
    m = ZarrDataset(str(tmp_path / "mnist.zarr"))
    ref = load_dataset(DataConfig(name="mnist", split="test", limit=300))
    assert m.dtype == np.uint8 and torch.equal(m.data, ref.data) and torch.equal(m.labels, ref.labels)
    # Digits are k/16 (not k/255) and grid2d is vectors: both stay float32, unchanged.
    dig = open_dataset(DataConfig(name="digits", limit=50), cache=str(tmp_path / "cache"))
    assert dig.dtype == np.float32 and torch.equal(dig.data, load_dataset(DataConfig(name="digits", limit=50)).data)
    grid = open_dataset(DataConfig(name="grid2d", limit=200, seed=3), cache=str(tmp_path / "cache"))
    want = load_dataset(DataConfig(name="grid2d", limit=200, seed=3)).data
    assert grid.shape == (2,) and torch.equal(grid.data, want)
    # load_dataset opens a .zarr URL lazily.
    lazy = load_dataset(DataConfig(name=str(tmp_path / "mnist.zarr"), limit=100))
    assert isinstance(lazy, ZarrDataset) and len(lazy) == 100 and lazy.reads == 0


def test_ingest_to_s3_then_stream_from_it(tmp_path, s3_bucket):
    url, opts = s3_bucket
    expected = _folder(tmp_path / "src", n_per_class=(3, 3))
    dest = f"{url}/data/pets.zarr"
    info = ingest(str(tmp_path / "src"), dest, chunk_rows=4, storage_options=opts, progress=False)
    assert info["chunks_written"] == 2
    ds = ZarrDataset(dest, storage_options=opts)
    assert len(ds) == 6 and ds.labels.tolist() == [k for _, k in expected]
    with StreamBatches(ds, batch_size=4, seed=0) as stream:
        idx = stream.indices(1)
        batch = stream.batch(1)
    want = np.stack([a for a, _ in expected])[idx][:, None].astype(np.float32) / 255
    np.testing.assert_array_equal(batch.numpy(), want)


def test_command_line_entry_point(tmp_path, capsys):
    from vegan.data.ingest import main, parse_resize

    _folder(tmp_path / "src", n_per_class=(2, 1), size=(9, 7))
    info = main([str(tmp_path / "src"), str(tmp_path / "cli.zarr"), "--resize", "4x5", "--chunk-rows", "2"])
    assert info["shape"] == [3, 1, 4, 5] and '"chunks_written": 2' in capsys.readouterr().out
    with pytest.raises(DatasetError, match="HxW"):
        parse_resize("64")


def test_materialising_a_large_zarr_dataset_is_refused(tmp_path, monkeypatch):
    import vegan.data.zarrset as zs

    np.savez(tmp_path / "x.npz", x=_images(50, size=(4, 4)))
    ingest(str(tmp_path / "x.npz"), str(tmp_path / "x.zarr"), chunk_rows=16, progress=False)
    ds = ZarrDataset(str(tmp_path / "x.zarr"))
    assert ds.data.shape == (50, 1, 4, 4)
    monkeypatch.setattr(zs, "MAX_IN_MEMORY_BYTES", 1000)
    with pytest.raises(DatasetError, match="over the in-memory limit.*StreamBatches"):
        _ = ds.data
    assert ds.read_chunk(3).shape == (2, 1, 4, 4) and ds.read_chunk(3).dtype == np.uint8
