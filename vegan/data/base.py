"""What every dataset answers, in memory or on storage: rows grouped in chunks.

Training batches, latent extraction and ingestion all work chunk by chunk, so a
dataset only has to say how many rows it has, how they are cut into chunks and
how to read one chunk. Rows are stored raw (``uint8`` images, ``float32``
vectors); :func:`to_float` turns a block of raw rows into the float tensor the
models see, so images stay ``uint8`` until a batch is formed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch


class DatasetError(RuntimeError):
    """A dataset cannot be found, read, or is unusable (empty, NaN, wrong shape)."""


def to_float(rows: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw rows -> float32 tensor: ``uint8`` images are divided by 255 (to [0, 1]), floats pass through."""
    t = torch.as_tensor(rows)
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    return t.to(torch.float32)


class ChunkedRows:
    """Chunk arithmetic shared by in-memory and Zarr datasets.

    Subclasses set ``chunk_rows`` and implement ``__len__`` and ``rows(lo, hi)``
    (raw rows ``[lo, hi)`` as a numpy array).
    """

    chunk_rows: int

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def rows(self, lo: int, hi: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def label_rows(self, lo: int, hi: int) -> np.ndarray | None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self) / self.chunk_rows)

    def chunk_bounds(self, c: int) -> tuple[int, int]:
        if not 0 <= c < self.n_chunks:
            raise IndexError(f"chunk {c} out of range: the dataset has {self.n_chunks} chunks")
        return c * self.chunk_rows, min(len(self), (c + 1) * self.chunk_rows)

    def read_chunk(self, c: int) -> np.ndarray:
        """Raw rows of chunk ``c`` (uint8 images stay uint8)."""
        return self.rows(*self.chunk_bounds(c))

    def float_rows(self, lo: int, hi: int) -> torch.Tensor:
        return to_float(self.rows(lo, hi))


@dataclass
class Dataset(ChunkedRows):
    """A dataset held in memory as a float tensor (small named datasets, ``.npz``, image folders)."""

    name: str
    data: torch.Tensor  # float32 in [0, 1] for images; raw floats for vectors
    labels: torch.Tensor | None
    chunk_rows: int = 4096

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.data.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.data.ndim == 4

    def __len__(self) -> int:
        return self.data.shape[0]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return self.data[lo:hi].numpy()

    def label_rows(self, lo: int, hi: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels[lo:hi].numpy()

    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(str(tuple(self.data.shape)).encode())
        h.update(self.data.numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]
