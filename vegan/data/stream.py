"""Training batches streamed from a chunked dataset, a pure function of (seed, step).

The row order of epoch ``e`` is built from chunks, so that a batch touches only
a few of them:

1. the chunks are shuffled by ``(seed, e)``;
2. consecutive groups of ``mix_chunks`` chunks form *windows*;
3. the rows of each window are shuffled together by ``(seed, e, window)``.

Step ``s`` takes positions ``[s*B, (s+1)*B)`` of the endless concatenation of
epochs (a batch may straddle two windows or two epochs), exactly like
:class:`vegan.training.BatchIndices` does with one permutation per epoch. So
``batch(step)`` depends on nothing but ``(seed, step)`` and the dataset: there
is no sampler state to checkpoint, and a run resumed at any step (mid-epoch
included) sees the same batches as an uninterrupted one.

Memory: decoded chunks sit in an LRU cache of ``cache_chunks`` entries (default
``2 * mix_chunks``: the current window and the next), so memory is a few chunks
whatever the dataset size, and with that default every chunk is read once per
epoch. Rows stay raw (``uint8`` for images) in the cache; a batch is converted
to float32 when it is formed.

Prefetch: ``batch(step)`` also queues ``step+1 .. step+prefetch`` on one
background thread, so the next batches are read and decoded while the model
trains on this one (Zarr decompression and the uint8 -> float conversion
release the GIL). All reads happen on that thread, so the cache needs no lock.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from vegan.data.base import ChunkedRows, to_float

_MASK = (1 << 63) - 1


def _rng(*ints: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(i) & _MASK for i in ints]))


class StreamBatches:
    """Batches of ``batch_size`` float32 rows of ``dataset``; ``batch(step)`` is pure in (seed, step).

    ``dataset`` is any :class:`~vegan.data.base.ChunkedRows` (a
    :class:`~vegan.data.zarrset.ZarrDataset` or an in-memory
    :class:`~vegan.data.base.Dataset`). Use as a drop-in for
    ``data[BatchIndices(n, B, seed)(step)]``.
    """

    def __init__(
        self,
        dataset: ChunkedRows,
        batch_size: int,
        seed: int,
        *,
        mix_chunks: int = 4,
        prefetch: int = 2,
        cache_chunks: int | None = None,
        pin_memory: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mix_chunks < 1:
            raise ValueError(f"mix_chunks must be >= 1, got {mix_chunks}")
        if len(dataset) < 1:
            raise ValueError("cannot stream batches from an empty dataset")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.n, self.chunk_rows, self.n_chunks = len(dataset), dataset.chunk_rows, dataset.n_chunks
        self.mix_chunks = min(mix_chunks, self.n_chunks)
        self.cache_chunks = max(1, cache_chunks if cache_chunks is not None else 2 * self.mix_chunks)
        self.prefetch, self.pin_memory = int(prefetch), pin_memory
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self.chunk_reads = 0  # chunk reads so far (tests check it stays one per chunk per epoch)
        self.max_cached = 0  # the most chunks ever held at once
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._order_lock = threading.RLock()  # indices() may run on the caller and the prefetch thread

    @property
    def steps_per_epoch(self) -> float:
        return self.n / self.batch_size

    # ---------------------------------------------------------------- order
    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk order of epoch ``e`` and the start position of each window in the epoch."""
        if e not in self._epochs:
            order = _rng(self.seed, e, 0).permutation(self.n_chunks)
            sizes = np.minimum(self.n, (order + 1) * self.chunk_rows) - order * self.chunk_rows
            starts = np.concatenate([[0], np.cumsum(sizes)])[:: self.mix_chunks]
            self._epochs[e] = (order, starts[: math.ceil(self.n_chunks / self.mix_chunks)])
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def _window(self, e: int, w: int) -> np.ndarray:
        """Global row indices of window ``w`` of epoch ``e``, in their shuffled order."""
        key = (e, w)
        if key not in self._windows:
            order, _ = self._epoch(e)
            rows = np.concatenate(
                [
                    np.arange(c * self.chunk_rows, min(self.n, (c + 1) * self.chunk_rows))
                    for c in order[w * self.mix_chunks : (w + 1) * self.mix_chunks]
                ]
            )
            self._windows[key] = rows[_rng(self.seed, e, w + 1).permutation(len(rows))]
            while len(self._windows) > 3:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return self._windows[key]

    def indices(self, step: int) -> np.ndarray:
        """Global row indices of batch ``step`` (int64)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        with self._order_lock:
            return self._indices(step)

    def _indices(self, step: int) -> np.ndarray:
        pos, end = step * self.batch_size, (step + 1) * self.batch_size
        parts = []
        while pos < end:
            e, offset = divmod(pos, self.n)
            _, starts = self._epoch(e)
            w = int(np.searchsorted(starts, offset, side="right") - 1)
            window = self._window(e, w)
            inner = offset - int(starts[w])
            take = min(len(window) - inner, end - pos)
            parts.append(window[inner : inner + take])
            pos += take
        return np.concatenate(parts)

    # ----------------------------------------------------------------- rows
    def _chunk(self, c: int) -> np.ndarray:
        if c in self._chunks:
            self._chunks.move_to_end(c)
            return self._chunks[c]
        arr = self.dataset.read_chunk(c)
        self.chunk_reads += 1
        self._chunks[c] = arr
        while len(self._chunks) > self.cache_chunks:
            self._chunks.popitem(last=False)
        self.max_cached = max(self.max_cached, len(self._chunks))
        return arr

    def _make(self, step: int) -> torch.Tensor:
        idx = self.indices(step)
        which = idx // self.chunk_rows
        out = None
        for c in np.unique(which):
            arr = self._chunk(int(c))
            if out is None:
                out = np.empty((len(idx), *arr.shape[1:]), dtype=arr.dtype)
            sel = which == c
            out[sel] = arr[idx[sel] - int(c) * self.chunk_rows]
        batch = to_float(out)
        return batch.pin_memory() if self.pin_memory else batch

    # ------------------------------------------------------------ public API
    def batch(self, step: int) -> torch.Tensor:
        """Float32 batch of ``step`` (CPU; pinned when ``pin_memory``); prefetches the next steps."""
        if self.prefetch <= 0:
            return self._make(step)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vegan-prefetch")
            fut = self._pending.pop(step, None) or self._pool.submit(self._make, step)
            for s in [s for s in self._pending if not step < s <= step + self.prefetch]:
                self._pending.pop(s).cancel()
            for s in range(step + 1, step + 1 + self.prefetch):
                if s not in self._pending:
                    self._pending[s] = self._pool.submit(self._make, s)
        return fut.result()

    __call__ = batch

    def close(self) -> None:
        """Stop the prefetch thread (it also stops with the process)."""
        with self._lock:
            for fut in self._pending.values():
                fut.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "StreamBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_pool=None, _pending={}, _lock=None, _order_lock=None, _chunks=OrderedDict())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._order_lock = threading.Lock(), threading.RLock()


def batch_source(data, batch_size: int, seed: int, **kwargs) -> StreamBatches:
    """A :class:`StreamBatches` for a float tensor, an in-memory ``Dataset`` or a ``ZarrDataset``.

    The one entry point a training loop needs: ``batch_source(data, B, seed).batch(step)``
    replaces ``data[BatchIndices(len(data), B, seed)(step)]``.
    """
    if isinstance(data, torch.Tensor):
        from vegan.data.base import Dataset

        data = Dataset("tensor", data.float(), None)
    return StreamBatches(data, batch_size, seed, **kwargs)
