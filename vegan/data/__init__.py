"""Dataset registry and the chunked data layer.

Two ways to get a dataset:

* :func:`load_dataset` (small data): named datasets, ``.npz`` files and image
  folders load into memory as a float tensor (:class:`Dataset`); a ``.zarr``
  URL opens lazily as a :class:`ZarrDataset` instead.
* :func:`open_dataset` (any size): always a lazy :class:`ZarrDataset`; named
  datasets and other URLs are ingested once into a Zarr cache first.

Images come as ``(N, C, H, W)`` (``uint8`` on storage until a batch is formed),
vectors (the 2-D grid) as ``(N, D)`` float32. Named datasets are resolved
offline first (a local cache, then copies shipped by packages), and only then
downloaded; when nothing works the error lists every place that was tried.
Datasets carry a content hash, so cached statistics (FID reference features)
can never be reused for changed data. :class:`StreamBatches` streams training
batches from either kind; :func:`ingest` writes the Zarr layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vegan.config import DataConfig
from vegan.data.base import ChunkedRows, Dataset, DatasetError, to_float
from vegan.data.ingest import ingest
from vegan.data.sources import _NAMED, DATASETS, GRID_MEANS, GRID_STD, _from_url
from vegan.data.stream import StreamBatches, batch_source
from vegan.data.zarrset import ZarrDataset, zarr_store


def _is_zarr_url(name: str) -> bool:
    return name.rstrip("/").endswith(".zarr")


def load_dataset(cfg: DataConfig) -> Dataset | ZarrDataset:
    """The dataset named by ``cfg``, checked usable: in memory, except ``.zarr`` URLs, which open lazily."""
    if _is_zarr_url(cfg.name):
        return ZarrDataset(cfg.name, limit=cfg.limit)
    if cfg.name in _NAMED:
        x, y = _NAMED[cfg.name](cfg)
    elif "/" in cfg.name or "." in cfg.name:
        x, y = _from_url(cfg.name)
    else:
        raise DatasetError(
            f"unknown dataset {cfg.name!r}; use one of {', '.join(DATASETS)} or a URL to .npz/.zarr/image folder"
        )
    if cfg.limit is not None:
        x = x[: cfg.limit]
        y = None if y is None else y[: cfg.limit]
    if len(x) == 0:
        raise DatasetError(f"dataset {cfg.name!r} is empty")
    if x.ndim not in (2, 4):
        raise DatasetError(f"dataset {cfg.name!r}: expected (N, D) or (N, C, H, W), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DatasetError(f"dataset {cfg.name!r} contains NaN or infinite values")
    if y is not None and len(y) != len(x):
        raise DatasetError(f"dataset {cfg.name!r}: {len(x)} examples but {len(y)} labels")
    return Dataset(cfg.name, torch.from_numpy(np.ascontiguousarray(x)), None if y is None else torch.from_numpy(y))


def cache_url(cfg: DataConfig, cache: str | None = None) -> str:
    """Where :func:`open_dataset` keeps the Zarr copy of a named dataset or a non-Zarr URL."""
    import hashlib

    base = cache or str(Path(cfg.root or os.environ.get("VEGAN_DATA", "~/.cache/vegan/data")).expanduser() / "zarr")
    if cfg.name in _NAMED:
        # grid2d is generated: its rows depend on the seed and the count; the others are fixed files.
        tag = f"{cfg.name}-{cfg.split}" + (f"-s{cfg.seed}-n{cfg.limit or 25_000}" if cfg.name == "grid2d" else "")
    else:
        tag = "url-" + hashlib.sha256(cfg.name.encode()).hexdigest()[:16]
    return f"{base.rstrip('/')}/{tag}.zarr"


def open_dataset(
    cfg: DataConfig, cache: str | None = None, *, client=None, chunk_rows: int = 4096, progress: bool = False
) -> ZarrDataset:
    """The dataset named by ``cfg`` as a lazy :class:`ZarrDataset`, ingesting it into ``cache`` once.

    ``.zarr`` URLs open directly. Named datasets and ``.npz``/image-folder URLs are
    converted by :func:`ingest` (resumable; a finished cache is reused as is).
    """
    if _is_zarr_url(cfg.name):
        return ZarrDataset(cfg.name, limit=cfg.limit)
    url = cache_url(cfg, cache)
    src_limit = cfg.limit if cfg.name == "grid2d" else None
    ingest(
        cfg.name,
        url,
        chunk_rows=chunk_rows,
        client=client,
        progress=progress,
        split=cfg.split,
        root=cfg.root,
        limit=src_limit,
        seed=cfg.seed,
    )
    return ZarrDataset(url, limit=cfg.limit, name=cfg.name)


__all__ = [
    "DATASETS",
    "GRID_MEANS",
    "GRID_STD",
    "ChunkedRows",
    "Dataset",
    "DatasetError",
    "StreamBatches",
    "ZarrDataset",
    "batch_source",
    "cache_url",
    "ingest",
    "load_dataset",
    "open_dataset",
    "to_float",
    "zarr_store",
]
