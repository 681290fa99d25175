"""Sets to evaluate as *row sources*: rows made on demand, chunk by chunk, wherever the chunk runs.

An evaluated set (the reference images, reconstructions, decoded codes) is never
materialised as a whole: a source knows its length, the shape of one example, a
cache ``key`` that identifies its content, and how to make rows ``[lo, hi)`` as
float32 (images in ``[0, 1]``). Feature extraction
(:func:`vegan.metrics.fidelity.extract_features`) maps over chunks of a source, in
this process or as Dask tasks; a source pickles small (a lazy
:class:`~vegan.data.ZarrDataset` pickles as its URL, codes on storage as theirs),
so a worker reads and decodes its own rows. Only features (``n x feature_dim``)
come back to the driver.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

from vegan.data.base import ChunkedRows, to_float


@runtime_checkable
class RowSource(Protocol):
    """What feature extraction needs from a set."""

    key: str
    """Identifies the content (cache key of its features): equal keys must mean equal rows."""

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        ...

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Float32 rows ``[lo, hi)``."""
        ...


def digest(*parts: Any) -> str:
    """Short stable hash of strings, numbers and arrays (cache keys)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ------------------------------------------------------------- dataset rows
def map_chunks(client, fn: Callable, data: ChunkedRows, items: list, *shared) -> list:
    """``[fn(data, item, *shared) for item in items]``, as Dask tasks when there is a client. A lazy dataset
    travels as its URL; an in-memory one and the shared arguments are scattered once."""
    from vegan.cluster import Tasks

    tasks = Tasks(client)
    # Scattered as one list, so that each value (a set, a dict) travels whole, not element by element.
    head = [] if getattr(data, "url", None) is not None else [data]
    scattered = list(tasks.scatter([*head, *shared])) if head or shared else []
    src, shared = (scattered[0] if head else data), scattered[len(head) :]
    return tasks.gather([tasks.submit(fn, src, item, *shared) for item in items])


def gather_rows(data: ChunkedRows, index: np.ndarray, client=None) -> np.ndarray:
    """Raw rows ``data[index]`` (any order, repeats allowed), reading each touched chunk once.

    With a Dask ``client`` every touched chunk is a task that returns only its selected
    rows, so the caller's memory is the selection, never a chunk of a big dataset.
    """
    index = np.asarray(index, dtype=np.int64)
    if len(index) and (index.min() < 0 or index.max() >= len(data)):
        raise IndexError(f"row index out of range for a dataset of {len(data)} rows")
    chunks = index // data.chunk_rows
    touched = np.unique(chunks)
    parts = map_chunks(client, _chunk_rows, data, [index[chunks == c] for c in touched])
    if not parts:
        return np.empty((0, *data.shape), dtype=np.float32)
    out = np.empty((len(index), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for c, part in zip(touched, parts):
        out[chunks == c] = part
    return out


def _chunk_rows(data: ChunkedRows, rows: np.ndarray) -> np.ndarray:
    """The selected ``rows`` (all in one chunk), reading only the span they cover."""
    first = int(rows.min())
    return data.rows(first, int(rows.max()) + 1)[rows - first]


@dataclass
class DatasetRows:
    """Rows ``index`` of a dataset (the reference, or the held-out images to reconstruct)."""

    data: ChunkedRows
    index: np.ndarray
    key: str = ""

    def __post_init__(self):
        self.index = np.asarray(self.index, dtype=np.int64)
        if not self.key:
            content = self.data.content_hash()
            self.key = digest("rows", content, len(self.data), self.index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        return to_float(gather_rows(self.data, self.index[lo:hi]))


def tensor_hash(x: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """Content hash of a tensor (and labels): the cache identity of a reference set."""
    h = hashlib.sha256()
    h.update(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TensorRows:
    """An in-memory tensor (sets made by a caller, tests); keyed by its content."""

    x: torch.Tensor
    key: str = ""

    def __post_init__(self):
        if not self.key:
            self.key = tensor_hash(self.x)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        return self.x[lo:hi].float()


# ------------------------------------------------------------------- codes
@dataclass
class ZarrCodes(ChunkedRows):
    """Rows of a float array in a Zarr group on any fsspec URL (codes of the latents or generate stage),
    read by range or index; pickles as its URL. A :class:`~vegan.data.base.ChunkedRows`, so codes
    stream like images (:class:`~vegan.data.StreamBatches`)."""

    url: str
    array: str = "codes"
    storage_options: dict | None = None
    limit: int | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_arr", "_checked")}

    def _array(self):
        if "_arr" not in self.__dict__:
            import zarr

            from vegan.data.zarrset import zarr_store
            from vegan.digests import CheckedRows

            store = zarr_store(self.url, self.storage_options, read_only=True)
            group = zarr.open_group(store, mode="r")
            self._arr = group[self.array]
            self._checked = CheckedRows(group, self.array, self.url)  # whole chunks, checked (vegan.digests)
        return self._arr

    def __len__(self) -> int:
        n = int(self._array().shape[0])
        return n if self.limit is None else min(n, self.limit)

    @property
    def dim(self) -> int:
        return int(self._array().shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def chunk_rows(self) -> int:
        return int(self._array().chunks[0])

    def label_rows(self, lo: int, hi: int) -> None:
        return None

    def rows(self, lo: int, hi: int) -> np.ndarray:
        self._array()
        return np.asarray(self._checked.rows(lo, min(hi, len(self))), dtype=np.float32)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` (reads only the chunks they fall in)."""
        self._array()
        return np.asarray(self._checked.take(np.asarray(index, dtype=np.int64)), dtype=np.float32)


@dataclass
class Decoded:
    """``net(codes[lo:hi])`` on demand: decoded generated codes, decoded Gaussian samples, model samples.

    ``codes`` is an array (O(n x latent_dim), shipped with the source) or :class:`ZarrCodes`
    (each chunk reads its own rows). Images are clamped to ``[0, 1]``; vectors are not.
    """

    net: torch.nn.Module
    codes: Any
    shape: tuple[int, ...]
    key: str
    method: str = "forward"  # the net's method that decodes (``decode`` of a whole model)
    batch: int = 512

    def __len__(self) -> int:
        return len(self.codes)

    @torch.no_grad()
    def rows(self, lo: int, hi: int) -> torch.Tensor:
        z = torch.as_tensor(_code_rows(self.codes, lo, hi), dtype=torch.float32)
        decode = getattr(self.net, self.method)
        out = torch.cat([decode(z[i : i + self.batch]) for i in range(0, len(z), self.batch)]) if len(z) else z
        return out.clamp(0, 1) if len(self.shape) == 3 else out


def _code_rows(codes: Any, lo: int, hi: int) -> np.ndarray:
    return codes.rows(lo, hi) if isinstance(codes, ZarrCodes) else np.asarray(codes[lo:hi])


@dataclass
class Reconstructed:
    """``decode(encode(x))`` of dataset rows, made on demand."""

    model: torch.nn.Module
    images: DatasetRows
    key: str
    batch: int = 512

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.images.shape

    @torch.no_grad()
    def rows(self, lo: int, hi: int) -> torch.Tensor:
        x = self.images.rows(lo, hi)
        out = torch.cat([self.model.decode(self.model.encode(x[i : i + self.batch]))
                         for i in range(0, len(x), self.batch)])  # fmt: skip
        return out.clamp(0, 1) if len(self.shape) == 3 else out


def as_source(x: Any) -> RowSource:
    """A tensor becomes :class:`TensorRows`; sources pass through."""
    if isinstance(x, torch.Tensor):
        return TensorRows(x)
    if not isinstance(x, RowSource):
        raise TypeError(f"expected a tensor or a row source, got {type(x).__name__}")
    return x


@dataclass
class Head:
    """The first ``n`` rows of a source."""

    source: RowSource
    n: int
    key: str

    def __len__(self) -> int:
        return min(self.n, len(self.source))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        return self.source.rows(lo, min(hi, len(self)))


def head(source: RowSource, n: int, keep_key: bool = False) -> RowSource:
    """``source`` cut to its first ``n`` rows (itself when it is no longer). The key of the cut is
    derived from the source's (``keep_key``: the same, for callers that add ``-n{len}`` themselves)."""
    if len(source) <= n:
        return source
    return Head(source, n, source.key if keep_key else digest("head", source.key, n))
