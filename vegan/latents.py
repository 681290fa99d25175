"""Encode a dataset into a Zarr array of latent codes, chunk by chunk, resumably.

Layout of the Zarr group::

    codes     (n, d) float32, row chunks of ``chunk_rows``
    labels    (n,)   int64 (when the dataset has labels)
    complete  (n_chunks,) bool, one chunk per element: set only after the
              matching rows of ``codes`` are written

A rerun skips complete chunks, so a crash loses at most one chunk and finished
chunks are never rewritten. The store can live on any fsspec URL.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm


class LatentError(RuntimeError):
    """Codes are unusable (NaN/inf, wrong dimension, incomplete store)."""


def _open_or_create(store, n: int, d: int, chunk_rows: int, with_labels: bool) -> zarr.Group:
    n_chunks = math.ceil(n / chunk_rows)
    try:
        group = zarr.open_group(store=store, mode="a")
    except Exception as exc:  # noqa: BLE001
        raise LatentError(f"cannot open latent store {store}: {exc}") from exc
    if "codes" in group:
        codes = group["codes"]
        if codes.shape != (n, d) or codes.chunks[0] != chunk_rows:
            raise LatentError(
                f"latent store {store} holds codes of shape {codes.shape} (chunks {codes.chunks}), "
                f"expected ({n}, {d}) in chunks of {chunk_rows}: delete it or use another run folder"
            )
        return group
    group.create_array("codes", shape=(n, d), chunks=(chunk_rows, d), dtype="float32", fill_value=np.nan)
    group.create_array("complete", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False)
    if with_labels:
        group.create_array("labels", shape=(n,), chunks=(chunk_rows,), dtype="int64", fill_value=-1)
    return group


@torch.no_grad()
def extract_latents(
    encode,
    data: torch.Tensor,
    store,
    labels: torch.Tensor | None = None,
    chunk_rows: int = 4096,
    batch_size: int = 512,
    progress: bool = True,
) -> dict:
    """Encode ``data`` with ``encode`` (a callable batch -> codes) into ``store``.

    Returns counts of chunks written and skipped (skipped = finished earlier).
    """
    n = data.shape[0]
    d = int(encode(data[:1]).shape[1])
    group = _open_or_create(store, n, d, chunk_rows, labels is not None)
    complete = group["complete"]
    done = complete[:]
    written = 0
    for c in tqdm(range(len(done)), desc="latents", unit="chunk", disable=not progress):
        if done[c]:
            continue
        lo, hi = c * chunk_rows, min(n, (c + 1) * chunk_rows)
        codes = torch.cat([encode(data[i : min(hi, i + batch_size)]) for i in range(lo, hi, batch_size)])
        codes = codes.float().cpu().numpy()
        if not np.isfinite(codes).all():
            raise LatentError(f"encoder produced NaN/inf codes for rows {lo}..{hi}: the autoencoder diverged")
        group["codes"][lo:hi] = codes
        if labels is not None:
            group["labels"][lo:hi] = labels[lo:hi].numpy()
        complete[c] = True  # marks the chunk finished only after its rows are stored
        written += 1
    return {"n": n, "dim": d, "chunks": len(done), "chunks_written": written, "chunks_skipped": len(done) - written}


def open_latents(store) -> zarr.Group:
    try:
        return zarr.open_group(store=store, mode="r")
    except Exception as exc:  # noqa: BLE001
        raise LatentError(f"cannot open latent store {store}: {exc}") from exc


def load_codes(store, expected_dim: int | None = None) -> np.ndarray:
    """All codes as a float32 array, after checking the store is complete and finite."""
    group = open_latents(store)
    if "codes" not in group or "complete" not in group:
        raise LatentError(f"{store} is not a vegan latent store (no 'codes'/'complete' arrays)")
    if not bool(np.all(group["complete"][:])):
        raise LatentError(f"latent store {store} is incomplete: rerun the latents stage")
    codes = np.asarray(group["codes"][:], dtype=np.float32)
    if expected_dim is not None and codes.shape[1] != expected_dim:
        raise LatentError(f"latent dimension mismatch: store has {codes.shape[1]}, model expects {expected_dim}")
    if not np.isfinite(codes).all():
        bad = int((~np.isfinite(codes)).any(axis=1).sum())
        raise LatentError(f"latent store {store} has {bad} rows with NaN/inf codes")
    return codes
