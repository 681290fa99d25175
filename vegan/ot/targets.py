"""Where the OT targets live, and what is computed from them without gathering them.

Codes are either an array in this process or a Zarr array (:class:`ZarrTargets`) that
Dask workers read themselves. Everything the driver needs from the codes is computed
block by block (``BLOCK_ROWS`` rows, a fixed layout whatever the Zarr chunking), where
the rows are: the centre and scale (:func:`fit_scaling`) and, per code, the squared norm
of the scaled code, plus the largest absolute row sum and a content digest
(:func:`scaled_stats`). Only O(d) floats per block and O(1) per code come back, so the
driver holds O(n) floats whatever the size of the codes. In-memory codes go through the
same block functions, so both give the same numbers bit for bit.

Workers load scaled rows through :func:`load_rows` (cached per process within a memory
budget) and fetch single rows by index with :func:`rows_by_index`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Rows per statistics block: the unit of the block layout, fixed so that in-memory and
# Zarr codes (any chunking) are summed in the same order.
BLOCK_ROWS = 1 << 16

# Share of a worker's memory limit its cached target rows may take. The kernel's working
# copies of the shard in use come on top (see vegan.ot.distributed.BYTES_PER_VALUE).
CACHE_SHARE = 0.15


class TargetsError(ValueError):
    """The codes are unusable (not 2-D, NaN/inf, not a Zarr array a worker can open)."""


@dataclass(frozen=True)
class ZarrTargets:
    """A 2-D Zarr array of codes on a local path or fsspec URL, which each worker opens itself."""

    url: str
    n: int
    d: int
    storage_options: dict = field(default_factory=dict, compare=False)

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None) -> "ZarrTargets":
        """Metadata only: checks the array exists and is 2-D."""
        arr = _open(url, storage_options or {})
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise TargetsError(f"codes at {url} must be a 2-D array (n_codes, dim), got shape {arr.shape}")
        return cls(url, int(arr.shape[0]), int(arr.shape[1]), dict(storage_options or {}))

    @classmethod
    def from_array(cls, arr: Any) -> "ZarrTargets | None":
        """The location of a ``zarr.Array`` on a local or fsspec store, or None (e.g. a memory store)."""
        import zarr
        import zarr.storage

        if not isinstance(arr, zarr.Array):
            return None
        store, path = arr.store, arr.path
        if isinstance(store, zarr.storage.LocalStore):
            root = str(store.root)
            url, opts = (f"{root}/{path}" if path else root), {}
        elif isinstance(store, zarr.storage.FsspecStore):
            proto = store.fs.protocol[0] if isinstance(store.fs.protocol, (tuple, list)) else store.fs.protocol
            full = f"{store.path}/{path}" if path else store.path
            url, opts = f"{proto}://{full}", dict(getattr(store.fs, "storage_options", {}) or {})
        else:
            return None
        return cls.open(url, opts)

    def array(self):
        return _open(self.url, self.storage_options)

    def checked(self):
        """A reader of whole chunks checked against the store's digests (:mod:`vegan.digests`); codes in
        a group without digests (an old run, a notebook's array) are read as they are."""
        import zarr

        from vegan.data.zarrset import zarr_store
        from vegan.digests import CheckedRows

        parent, _, name = self.url.rstrip("/").rpartition("/")
        try:
            group = zarr.open_group(zarr_store(parent, self.storage_options, read_only=True), mode="r")
            return CheckedRows(group, name, parent)
        except Exception:  # noqa: BLE001 - not inside a group: a plain array
            return None

    def read(self, lo: int, hi: int) -> np.ndarray:
        reader = self.checked()
        return reader.rows(lo, hi) if reader is not None else np.asarray(self.array()[lo:hi])

    def read_rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted, unique): only the chunks holding them are read (and checked)."""
        idx = np.asarray(idx, dtype=np.int64)
        reader = self.checked()
        if reader is not None:
            return reader.take(idx)
        return np.asarray(self.array().get_orthogonal_selection((idx, slice(None))))


def _open(url: str, storage_options: dict):
    import zarr

    try:
        return zarr.open_array(url, mode="r", storage_options=storage_options or None)
    except Exception as exc:
        raise TargetsError(f"cannot open the codes at {url}: {type(exc).__name__}: {exc}") from exc


def shape_of(src: Any) -> tuple[int, int]:
    return (src.n, src.d) if isinstance(src, ZarrTargets) else tuple(src.shape)


def read_block(src: Any, lo: int, hi: int) -> np.ndarray:
    return src.read(lo, hi) if isinstance(src, ZarrTargets) else np.asarray(src[lo:hi])


def blocks(n: int) -> list[tuple[int, int]]:
    """The fixed block layout of ``n`` rows."""
    return [(lo, min(n, lo + BLOCK_ROWS)) for lo in range(0, n, BLOCK_ROWS)]


def scale_rows(y: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """The one place codes are scaled (drivers and workers must agree bit for bit)."""
    return ((np.asarray(y, dtype=np.float64) - center) / scale).astype(np.float32)


# ------------------------------------------------------------- block statistics
def _moments_block(src: Any, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(read_block(src, lo, hi), dtype=np.float64)
    if not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).any(axis=1).sum())
        raise TargetsError(f"codes contain NaN or inf in {bad} row(s) of rows {lo}..{hi}")
    return y.sum(axis=0), y.min(axis=0), y.max(axis=0)


def _radius_block(src: Any, lo: int, hi: int, center: np.ndarray) -> float:
    y = np.asarray(read_block(src, lo, hi), dtype=np.float64)
    return float(np.sqrt(((y - center) ** 2).sum(axis=1)).max())


def _scaled_block(src: Any, lo: int, hi: int, center: np.ndarray, scale: float) -> tuple[np.ndarray, float, bytes]:
    ys = scale_rows(read_block(src, lo, hi), center, scale)
    sq = (ys.astype(np.float64) ** 2).sum(axis=1)
    return sq, float(np.abs(ys).sum(axis=1).max()), hashlib.sha256(np.ascontiguousarray(ys).tobytes()).digest()


@dataclass(frozen=True)
class Scaling:
    """Centre (the mean code), scale (largest sup-norm for the cube, 2-norm for the ball, of a centred
    code; 1.0 when all codes are equal) and per-dimension extremes."""

    center: np.ndarray
    scale: float
    lo: np.ndarray
    hi: np.ndarray


def fit_scaling(src: Any, source: str, tasks=None) -> Scaling:
    """Centre and scale of the codes, block by block (on the workers when ``tasks`` has a client)."""
    from vegan.cluster import Tasks

    if source not in ("cube", "ball"):
        raise ValueError(f"source must be 'cube' or 'ball', got {source!r}")
    tasks = tasks or Tasks()
    n, _ = shape_of(src)
    spans = blocks(n)
    parts = tasks.gather([tasks.submit(_moments_block, src, lo, hi) for lo, hi in spans])
    total = parts[0][0].copy()
    for p in parts[1:]:
        total += p[0]
    center = total / n
    lo = np.min([p[1] for p in parts], axis=0)
    hi = np.max([p[2] for p in parts], axis=0)
    if source == "cube":
        radius = float(np.maximum(hi - center, center - lo).max())
    else:
        radius = max(tasks.gather([tasks.submit(_radius_block, src, a, b, center) for a, b in spans]))
    return Scaling(center, radius if radius > 0 else 1.0, lo, hi)


@dataclass(frozen=True)
class ScaledStats:
    """Per-code facts about the scaled targets that the solver needs, O(n) floats in all."""

    sq_norms: np.ndarray | None  # (n,) float64: |y_i|^2 of the scaled float32 codes (None: handed over)
    max_abs_row_sum: float  # max_i sum_j |y_ij|
    digest: str  # sha256 over the block digests of the scaled float32 bytes


def scaled_stats(src: Any, center: np.ndarray, scale: float, tasks=None) -> ScaledStats:
    from vegan.cluster import Tasks

    tasks = tasks or Tasks()
    n, _ = shape_of(src)
    parts = tasks.gather([tasks.submit(_scaled_block, src, lo, hi, center, scale) for lo, hi in blocks(n)])
    digest = hashlib.sha256(b"".join(p[2] for p in parts)).hexdigest()
    return ScaledStats(np.concatenate([p[0] for p in parts]), max(p[1] for p in parts), digest)


# ------------------------------------------------------------ rows on a worker
@dataclass(frozen=True)
class TargetRows:
    """Rows ``lo .. hi-1`` of the scaled targets ``(codes - center) / scale``, loaded where they are used.

    ``token`` names the scaled targets (a problem fingerprint or a hash of store and scaling),
    so each process loads a range once and reuses it across iterations and tasks.
    """

    store: ZarrTargets
    center: np.ndarray = field(compare=False)
    scale: float
    token: str
    lo: int = 0
    hi: int | None = None

    @property
    def stop(self) -> int:
        return self.store.n if self.hi is None else self.hi

    def part(self, lo: int, hi: int) -> "TargetRows":
        return TargetRows(self.store, self.center, self.scale, self.token, self.lo + lo, self.lo + hi)

    def nbytes(self) -> int:
        return (self.stop - self.lo) * self.store.d * 4


def targets_token(store: ZarrTargets, center: np.ndarray, scale: float) -> str:
    h = hashlib.sha256(f"{store.url}:{store.n}x{store.d}:{scale!r}".encode())
    h.update(np.ascontiguousarray(center, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


_CACHE: OrderedDict[tuple, tuple[Any, torch.Tensor]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cache_budget() -> int | None:
    """Bytes this process may spend on cached rows: a share of its Dask worker's memory limit."""
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        return None
    return int(CACHE_SHARE * limit) if limit else None


def load_rows(src: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """The scaled rows of ``src`` (a :class:`TargetRows`, or a scattered / local array) as a float32 tensor.

    On a Dask worker the same tensor object comes back for repeated calls (the kernel
    caches its screening copy per tensor). Rows of other targets are dropped; a range
    that does not fit the worker's budget next to those already held is loaded without
    being kept (shards visited in a cycle would make an LRU cache miss every time, while
    keeping the first ones lets those always hit). Elsewhere only store rows are cached
    (an array is wrapped without a copy).
    """
    budget = _cache_budget()
    if not isinstance(src, TargetRows):
        if budget is None:
            return torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).to(device)
        key, nbytes = ("array", id(src), str(device)), src.nbytes
    else:
        key, nbytes = (src.token, src.lo, src.stop, str(device)), src.nbytes()
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key][1]
        for k in [k for k in _CACHE if k[0] != key[0]]:
            del _CACHE[k]  # one set of targets per process at a time
        keep = budget is None or sum(t.nbytes for _, t in _CACHE.values()) + nbytes <= budget
    if isinstance(src, TargetRows):
        t = torch.from_numpy(_read_scaled(src)).to(device)
    else:
        t = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).to(device)
    if keep:
        with _CACHE_LOCK:
            _CACHE[key] = (src, t)  # the entry keeps `src` alive, so its id cannot be reused while cached
    return t


def _read_scaled(src: TargetRows) -> np.ndarray:
    """Scaled rows block by block: the float64 working copy is one block, not the whole range."""
    out = np.empty((src.stop - src.lo, src.store.d), dtype=np.float32)
    for a in range(src.lo, src.stop, BLOCK_ROWS):
        b = min(src.stop, a + BLOCK_ROWS)
        out[a - src.lo : b - src.lo] = scale_rows(src.store.read(a, b), src.center, src.scale)
    return out


def cached_rows(src: TargetRows) -> torch.Tensor | None:
    """The loaded tensor of exactly these rows in this process (any device), if any."""
    with _CACHE_LOCK:
        for key, (_, t) in _CACHE.items():
            if key[:3] == (src.token, src.lo, src.stop):
                return t
    return None


def rows_by_index(src: Any, idx: np.ndarray) -> np.ndarray:
    """Scaled rows ``idx`` (global indices, any order, repeats allowed) as float32.

    From the rows this process already holds when it holds them all, else read from
    the Zarr store by orthogonal selection (only the chunks that hold the rows).
    """
    idx = np.asarray(idx, dtype=np.int64)
    if not isinstance(src, TargetRows):
        return np.asarray(src, dtype=np.float32)[idx]
    held = cached_rows(src)
    if held is not None:
        return held.cpu().numpy()[idx - src.lo]
    uniq, inverse = np.unique(idx, return_inverse=True)
    return scale_rows(src.store.read_rows(uniq), src.center, src.scale)[inverse.reshape(idx.shape)]
