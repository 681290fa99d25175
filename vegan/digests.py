"""Per-chunk digests of the Zarr stores vegan writes: sealed on write, checked on every read.

Every row-chunked store (an ingested dataset, the latents stage's codes, the generate
stage's samples) holds ``digest`` ((n_chunks, 32) uint8): the sha256 of a chunk's rows of
each array named in the group attribute ``digest_arrays`` (``x`` then ``y`` for a dataset),
written after the rows and before the chunk's ``complete`` marker. Readers go through
:class:`CheckedRows`, which reads whole chunks, hashes them and raises
:class:`CorruptChunkError` (store URL, chunk index, rows, the fix) when the bytes differ from
what was written, when a chunk cannot be decoded, or when its object is gone (Zarr would
silently return fill values). A chunk with an all-zero digest (a store written before
digests existed, or a chunk not yet sealed) is read unchecked, so old runs stay valid.

Any store with this layout can use the helpers: :func:`add_digests` when creating it,
:func:`write_chunk` per chunk, :class:`CheckedRows` to read, :func:`scan` to check it all
(``vegan verify``) and :func:`mark_missing` to have a chunk recomputed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

DIGEST = "digest"
_UNSEALED = bytes(32)


class CorruptChunkError(RuntimeError):
    """A chunk of a Zarr store does not hold what was written. Pickles (it crosses from Dask workers)."""

    def __init__(self, url: str, chunk: int, lo: int, hi: int, why: str, dataset: bool = False):
        self.url, self.chunk, self.lo, self.hi, self.why, self.dataset = url, chunk, lo, hi, why, dataset
        if dataset:
            fix = (
                "the dataset is an input and is never rewritten: ingest it again into a new folder "
                "(`vegan ingest SRC DEST`) or restore it from its source"
            )
        else:
            fix = (
                "rerun the same `vegan run` command (it recomputes this chunk alone), "
                "or check every store first with `vegan verify --storage RUN`"
            )
        super().__init__(f"corrupt chunk {chunk} (rows {lo}..{hi - 1}) of {url}: {why}; {fix}")

    def __reduce__(self):
        return (type(self), (self.url, self.chunk, self.lo, self.hi, self.why, self.dataset))


def chunk_digest(values: list[np.ndarray]) -> np.ndarray:
    """sha256 over the bytes of one chunk's rows of each array, in order, as 32 uint8."""
    h = hashlib.sha256()
    for v in values:
        h.update(np.ascontiguousarray(v).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


def add_digests(group, n_chunks: int, arrays: list[str]) -> None:
    """Create the ``digest`` array of a new store and record which arrays it covers (in order)."""
    group.create_array(DIGEST, shape=(n_chunks, 32), chunks=(1, 32), dtype="uint8", fill_value=0)
    group.attrs["digest_arrays"] = list(arrays)


def digest_arrays(group) -> list[str]:
    """The arrays a store's digests cover ([] when it has none)."""
    if DIGEST not in group:
        return []
    names = group.attrs.get("digest_arrays")
    if names is None:  # datasets ingested before the attribute existed: x, then y
        names = ["x", "y"] if "y" in group else ["x"]
    return [n for n in names if n in group]


def write_chunk(group, c: int, lo: int, values: dict[str, np.ndarray]) -> None:
    """Rows of each array, then the chunk's digest, then its ``complete`` marker (a chunk without
    its marker is rewritten on resume; one with it is sealed)."""
    for name, v in values.items():
        group[name][lo : lo + len(v)] = v
    names = digest_arrays(group)
    if names:
        group[DIGEST][c] = chunk_digest([np.asarray(values[n], dtype=group[n].dtype) for n in names])
    group["complete"][c] = True


def mark_missing(group, chunks: list[int]) -> None:
    """Unseal ``chunks``: clear their marker (first) and digest, so the writing stage recomputes them."""
    for c in chunks:
        group["complete"][c] = False
        if DIGEST in group:
            group[DIGEST][c] = 0


def is_dataset(group) -> bool:
    return "vegan_dataset" in group.attrs


@dataclass
class CheckedRows:
    """Reads rows of ``array`` from ``group`` a whole chunk at a time, each chunk checked against its digest.

    ``url`` names the store in errors. Without digests (an old store) rows are read as they are.
    """

    group: Any
    array: str
    url: str

    def __post_init__(self):
        self.names = digest_arrays(self.group)
        # Array handles (metadata) are kept; digests are read afresh for each chunk, since a healed
        # chunk gets a new one while this reader lives on a worker.
        self._arrays = {n: self.group[n] for n in {*self.names, self.array, *([DIGEST] if self.names else [])}}
        arr = self._arrays[self.array]
        self.n = int(arr.shape[0])
        self.chunk_rows = int(arr.chunks[0])
        self.dataset = is_dataset(self.group)

    def _digest_of(self, c: int) -> bytes:
        return np.asarray(self._arrays[DIGEST][c]).tobytes()

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min(self.n, (c + 1) * self.chunk_rows)

    def error(self, c: int, why: str) -> CorruptChunkError:
        lo, hi = self.bounds(c)
        return CorruptChunkError(self.url, c, lo, hi, why, self.dataset)

    def chunk(self, c: int) -> dict[str, np.ndarray]:
        """Every digested array's rows of chunk ``c``, checked (raises :class:`CorruptChunkError`)."""
        lo, hi = self.bounds(c)
        names = self.names if self.array in self.names else [self.array]
        try:
            values = {n: np.asarray(self._arrays[n][lo:hi]) for n in names}
        except Exception as exc:  # a garbled chunk fails to decompress (zstd, blosc, ...)
            raise self.error(c, f"it cannot be decoded ({type(exc).__name__}: {exc})") from exc
        if self.array in self.names:
            want = self._digest_of(c)
            if want != _UNSEALED and chunk_digest([values[n] for n in self.names]).tobytes() != want:
                raise self.error(c, self._mismatch(values))
        return values

    def _mismatch(self, values: dict[str, np.ndarray]) -> str:
        fill = self._arrays[self.array].fill_value
        v = values[self.array]
        gone = np.isnan(v).all() if fill is not None and np.isnan(fill) else bool((v == fill).all())
        if gone:
            return "its chunk object is missing (it reads as fill values)"
        return "its bytes differ from the digest written with it"

    def _read_span(self, c0: int, c1: int) -> np.ndarray:
        """Rows of chunks ``c0 .. c1-1``, checked: one read per array, then per-chunk digests."""
        if self.array not in self.names:
            return np.asarray(self._arrays[self.array][c0 * self.chunk_rows : self.bounds(c1 - 1)[1]])
        return np.concatenate([self.chunk(c)[self.array] for c in range(c0, c1)])

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` (clipped to the array), from the whole chunks that hold them."""
        hi = min(hi, self.n)
        if hi <= lo:
            return np.asarray(self._arrays[self.array][lo:lo])
        c0, c1 = lo // self.chunk_rows, (hi - 1) // self.chunk_rows + 1
        return self._read_span(c0, c1)[lo - c0 * self.chunk_rows : hi - c0 * self.chunk_rows]

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` (any order, repeats allowed), reading only the chunks they fall in."""
        index = np.asarray(index, dtype=np.int64)
        if self.array not in self.names:
            return np.asarray(self._arrays[self.array].oindex[index])
        chunks = index // self.chunk_rows
        arr = self._arrays[self.array]
        out = np.empty((len(index), *arr.shape[1:]), dtype=arr.dtype)
        for c in np.unique(chunks):
            sel = chunks == c
            out[sel] = self.chunk(int(c))[self.array][index[sel] - int(c) * self.chunk_rows]
        return out


@dataclass(frozen=True)
class Damage:
    """One bad chunk found by :func:`scan`."""

    chunk: int
    lo: int
    hi: int
    why: str


def scan(group, url: str) -> list[Damage]:
    """Every sealed chunk of a store checked against its digest (unfinished chunks are not looked at)."""
    names = digest_arrays(group)
    if not names:
        return []
    reader = CheckedRows(group, names[0], url)
    done = np.asarray(group["complete"][:]) if "complete" in group else np.ones(len(group[DIGEST]), bool)
    bad = []
    for c in np.flatnonzero(done):
        try:
            reader.chunk(int(c))
        except CorruptChunkError as exc:
            bad.append(Damage(exc.chunk, exc.lo, exc.hi, exc.why))
    return bad


def store_url(store: Any) -> str:
    """The URL of a Zarr store (a local path, or ``protocol://path``), for messages and matching."""
    import zarr.storage

    if isinstance(store, str):
        return store.removeprefix("file://").rstrip("/")
    if isinstance(store, zarr.storage.LocalStore):
        return str(store.root).rstrip("/")
    if isinstance(store, zarr.storage.FsspecStore):
        proto = store.fs.protocol[0] if isinstance(store.fs.protocol, (tuple, list)) else store.fs.protocol
        return f"{proto}://{store.path}".rstrip("/")
    return repr(store)
