"""Synthetic image datasets of any size, written chunk by chunk (for scale tests and benchmarks).

``shifted-mnist``: MNIST training digits with a random shift of up to
``max_shift`` pixels in each direction and a random horizontal flip. Each chunk
is a pure function of ``(seed, chunk)``, generated on the worker that writes it,
so N images never pass through the driver and a rerun regenerates identical
chunks. Labels are the digit classes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from vegan.data.ingest import IngestPlan, open_rw, write_chunk, write_plan


@lru_cache(maxsize=1)
def _mnist_uint8(root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST train digits as uint8 (N, 28, 28) and labels, loaded once per process (47 MB)."""
    from vegan.config import DataConfig
    from vegan.data.sources import _find_idx, _idx_candidates, _idx_dataset, _read_idx

    for folder in _idx_candidates("mnist", DataConfig(name="mnist", root=root)):
        img, lab = _find_idx(folder, "train-images-idx3-ubyte"), _find_idx(folder, "train-labels-idx1-ubyte")
        if img and lab:  # the raw uint8 file: no float copy of 60,000 digits
            return _read_idx(img), _read_idx(lab).astype(np.int64)
    x, y = _idx_dataset("mnist", DataConfig(name="mnist", root=root))  # download path, or its clear error
    return np.rint(x[:, 0] * 255).astype(np.uint8), y


def shifted_mnist_rows(
    seed: int, c: int, lo: int, hi: int, max_shift: int = 3, root: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[lo, hi)`` (chunk ``c``) of the synthetic dataset: (n, 1, 28, 28) uint8 and labels."""
    base, labels = _mnist_uint8(root)
    rng = np.random.default_rng([seed, c])
    n = hi - lo
    pick = rng.integers(0, len(base), n)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    pad = max_shift
    padded = np.pad(base[pick], ((0, 0), (pad, pad), (pad, pad)))
    out = np.empty((n, 1, 28, 28), dtype=np.uint8)
    for i in range(n):
        dy, dx = shifts[i]
        img = padded[i, pad + dy : pad + dy + 28, pad + dx : pad + dx + 28]
        out[i, 0] = img[:, ::-1] if flips[i] else img
    return out, labels[pick]


def _shifted_chunk(dest, storage_options, c: int, lo: int, hi: int, seed: int, max_shift: int, root) -> int:
    group = open_rw(dest, storage_options)
    if group["complete"][c]:
        return 0
    x, y = shifted_mnist_rows(seed, c, lo, hi, max_shift, root)
    write_chunk(group, c, lo, x, y)
    return 1


def shifted_mnist_plan(n: int, seed: int = 0, max_shift: int = 3, root: str | None = None) -> IngestPlan:
    return IngestPlan(
        n=int(n),
        item_shape=(1, 28, 28),
        dtype="uint8",
        kind="image",
        has_labels=True,
        attrs={
            "source": f"shifted-mnist(n={n}, seed={seed}, max_shift={max_shift})",
            "label_names": [str(i) for i in range(10)],
        },
        chunk_fn=_shifted_chunk,
        chunk_args=lambda lo, hi: (hi, seed, max_shift, root),
    )


def write_shifted_mnist(
    dest: Any,
    n: int,
    *,
    chunk_rows: int = 4096,
    seed: int = 0,
    max_shift: int = 3,
    client=None,
    progress: bool = False,
    storage_options: dict | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Write ``n`` synthetic digits to the Zarr dataset at ``dest`` (resumable, parallel with a client)."""
    return write_plan(
        shifted_mnist_plan(n, seed, max_shift, root),
        dest,
        chunk_rows=chunk_rows,
        client=client,
        progress=progress,
        storage_options=storage_options,
    )
