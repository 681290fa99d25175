"""A dataset stored as a chunked Zarr group on any fsspec URL, read lazily.

Layout written by :func:`vegan.data.ingest.ingest`::

    x         (N, C, H, W) uint8 images, or (N, D) float32 vectors; row chunks of ``chunk_rows``
    y         (N,) int64 labels (optional)
    digest    (n_chunks, 32) uint8: sha256 of each finished chunk (x rows, then y rows)
    complete  (n_chunks,) bool, one element per Zarr chunk: set only after the chunk's rows are stored
    attrs     vegan_dataset, shape, dtype, kind, source, resize, label_names, chunk_rows,
              complete (True once every chunk is done), content_hash

Opening reads only the attributes; rows are read a chunk at a time, so a dataset
far larger than memory can be trained on, encoded and evaluated. A
:class:`ZarrDataset` pickles as its URL, so Dask tasks reopen it on the worker.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from vegan.data.base import ChunkedRows, DatasetError, to_float

# Materialising ``.data`` of a Zarr dataset is refused above this many float32 bytes.
MAX_IN_MEMORY_BYTES = int(float(os.environ.get("VEGAN_MAX_IN_MEMORY_BYTES", 4 * 2**30)))


def is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def zarr_store(url: Any, storage_options: dict | None = None, read_only: bool = False):
    """A Zarr v3 store for a URL (LocalStore on disk, FsspecStore elsewhere); stores pass through."""
    import zarr.storage

    if not isinstance(url, str):
        return url
    if is_local_url(url):
        path = url[len("file://") :] if url.startswith("file://") else url
        return zarr.storage.LocalStore(os.path.abspath(os.path.expanduser(path)), read_only=read_only)
    from vegan.storage import storage_options_from_env

    opts = storage_options if storage_options is not None else storage_options_from_env(url)
    try:
        return zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=read_only)
    except (ValueError, ImportError, TypeError) as exc:
        raise DatasetError(f"cannot open Zarr URL {url!r}: {type(exc).__name__}: {exc}") from exc


class ZarrDataset(ChunkedRows):
    """Lazy view of an ingested Zarr dataset: shape, length, labels and chunked raw reads.

    ``limit`` keeps the first rows only. ``reads`` counts chunk reads (tests use it to
    check that streaming stays bounded).
    """

    def __init__(
        self, url: Any, storage_options: dict | None = None, limit: int | None = None, name: str | None = None
    ):
        self.url = url
        self.storage_options = storage_options
        self.name = name or (url if isinstance(url, str) else repr(url))
        self._group = None
        self._labels: torch.Tensor | None = None
        self._checked = None
        self.reads = 0
        g = self.group
        if "x" not in g:
            raise DatasetError(f"{self.name} is not a vegan dataset (no array 'x'); create it with `vegan ingest`")
        if not g.attrs.get("complete", False):
            raise DatasetError(
                f"dataset {self.name} is incomplete (ingestion did not finish): rerun `vegan ingest` with the same "
                "arguments to finish it"
            )
        x = g["x"]
        self.n = int(x.shape[0]) if limit is None else min(int(x.shape[0]), int(limit))
        if self.n == 0:
            raise DatasetError(f"dataset {self.name} is empty")
        self.chunk_rows = int(x.chunks[0])
        self.shape = tuple(int(s) for s in x.shape[1:])
        self.dtype = np.dtype(x.dtype)
        self.has_labels = "y" in g
        self.label_names = list(g.attrs.get("label_names") or [])
        self._limit = limit

    # ---------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_group"] = None
        state["_labels"] = None
        state["_checked"] = None
        return state

    @property
    def group(self):
        if self._group is None:
            import zarr

            try:
                self._group = zarr.open_group(zarr_store(self.url, self.storage_options, read_only=True), mode="r")
            except DatasetError:
                raise
            except Exception as exc:
                raise DatasetError(f"cannot open dataset {self.name}: {type(exc).__name__}: {exc}") from exc
        return self._group

    # ---------------------------------------------------------------- rows
    def __len__(self) -> int:
        return self.n

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def checked(self):
        """Reader of ``x`` by whole chunks, each checked against its digest (:mod:`vegan.digests`)."""
        if self._checked is None:
            from vegan.digests import CheckedRows

            self._checked = CheckedRows(self.group, "x", self.name)
        return self._checked

    def rows(self, lo: int, hi: int) -> np.ndarray:
        self.reads += 1
        return self.checked.rows(lo, min(hi, self.n))

    def label_rows(self, lo: int, hi: int) -> np.ndarray | None:
        # Not checked on their own: a chunk's digest covers its labels, checked whenever its rows are read.
        return np.asarray(self.group["y"][lo : min(hi, self.n)]) if self.has_labels else None

    @property
    def labels(self) -> torch.Tensor | None:
        """All labels (N int64: O(N) small integers, never images)."""
        if self.has_labels and self._labels is None:
            self._labels = torch.from_numpy(np.asarray(self.group["y"][: self.n], dtype=np.int64))
        return self._labels

    @property
    def data(self) -> torch.Tensor:
        """The whole dataset as float32, for code that still needs it in memory; refused when large."""
        nbytes = self.n * int(np.prod(self.shape)) * 4
        if nbytes > MAX_IN_MEMORY_BYTES:
            raise DatasetError(
                f"dataset {self.name} is {nbytes / 2**30:.1f} GiB as float32, over the in-memory limit "
                f"({MAX_IN_MEMORY_BYTES / 2**30:.1f} GiB, VEGAN_MAX_IN_MEMORY_BYTES): stream it by chunks "
                "(vegan.data.StreamBatches, read_chunk) instead"
            )
        return to_float(self.rows(0, self.n))

    def content_hash(self) -> str:
        """Hash of the stored chunks (recorded at ingest), so it costs no data read."""
        import hashlib

        full = self.group.attrs.get("content_hash")
        if self.n == int(self.group["x"].shape[0]) and full:
            return full
        h = hashlib.sha256(f"{full}:{self.n}".encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"ZarrDataset({self.name!r}, n={self.n}, shape={self.shape}, dtype={self.dtype}, "
            f"chunk_rows={self.chunk_rows})"
        )


def open_zarr_dataset(url: Any, storage_options: dict | None = None, limit: int | None = None) -> ZarrDataset:
    return ZarrDataset(url, storage_options, limit=limit)
