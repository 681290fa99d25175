"""Encode a dataset into a Zarr array of latent codes, chunk by chunk, resumably.

Layout of the Zarr group::

    codes     (n, d) float32, row chunks of ``chunk_rows``
    labels    (n,)   int64 (when the dataset has labels)
    digest    (n_chunks, 32) uint8: sha256 of each chunk's codes and labels (:mod:`vegan.digests`),
              checked whenever codes are read
    complete  (n_chunks,) bool, one chunk per element: set only after the
              matching rows of ``codes`` and the digest are written

One function, :func:`encode_chunk`, does one chunk: it reads the chunk's rows
from the dataset, encodes them batch by batch, writes its rows of ``codes`` and
``labels`` and then its ``complete`` marker. Without a Dask client the chunks
run one after the other in this process; with one, each chunk is a task on a
worker that reads its rows from the dataset's Zarr store and writes its codes
straight into the latent store, so the driver never holds images or codes. A
rerun skips complete chunks, so a crash (or a killed worker) loses at most the
chunks in flight and finished chunks are never rewritten. Both stores can live
on any fsspec URL.

:func:`code_stats` computes the centring and scale the OT problem needs
(:func:`vegan.ot.targets.fit_scaling`, the one implementation) by streaming over the codes.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import zarr

from vegan.data.base import ChunkedRows, Dataset, to_float
from vegan.data.zarrset import zarr_store
from vegan.device import resolve_device
from vegan.digests import DIGEST, CheckedRows, add_digests, store_url, write_chunk
from vegan.progress import Progress


class LatentError(RuntimeError):
    """Codes are unusable (NaN/inf, wrong dimension, incomplete store)."""


# ------------------------------------------------------------------ encoders
@dataclass(frozen=True)
class EncoderRef:
    """An encoder a worker loads itself: a ``model.pt`` written by the ae stage, on any fsspec URL.

    The file holds ``{"state_dict", "shape", "config"}`` (an AEConfig dump). Each
    process loads it once (cached by URL and device); ``device="auto"`` picks the
    worker's GPU when it has one.
    """

    url: str
    storage_options: dict | None = None
    device: str = "auto"

    def load(self) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (self.url, self.device, repr(self.storage_options))
        with _ENCODER_LOCK:
            if key not in _ENCODERS:
                _ENCODERS[key] = _load_encoder(self)
            return _ENCODERS[key]


_ENCODERS: dict[tuple, Callable] = {}
_ENCODER_LOCK = threading.Lock()


def _load_encoder(ref: EncoderRef) -> Callable[[torch.Tensor], torch.Tensor]:
    import io

    import fsspec

    from vegan.config import AEConfig
    from vegan.models import build_model
    from vegan.storage import storage_options_from_env

    opts = ref.storage_options if ref.storage_options is not None else storage_options_from_env(ref.url)
    try:
        with fsspec.open(ref.url, "rb", **({} if "://" not in ref.url else opts)) as f:
            saved = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise LatentError(f"encoder file not found: {ref.url}") from exc
    model = build_model(AEConfig(**saved["config"]), tuple(saved["shape"]))
    model.load_state_dict(saved["state_dict"])
    device = resolve_device(ref.device)
    model = model.to(device).eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode(x.to(device, non_blocking=True))

    return encode


def _resolve(encoder: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return encoder.load() if isinstance(encoder, EncoderRef) else encoder


# ------------------------------------------------------------------- chunks
def _open_or_create(store, n: int, d: int, chunk_rows: int, with_labels: bool) -> zarr.Group:
    n_chunks = math.ceil(n / chunk_rows)
    try:
        group = zarr.open_group(store=store, mode="a")
    except Exception as exc:
        raise LatentError(f"cannot open latent store {store}: {exc}") from exc
    if "codes" in group:
        codes = group["codes"]
        if codes.shape != (n, d) or codes.chunks[0] != chunk_rows:
            raise LatentError(
                f"latent store {store} holds codes of shape {codes.shape} (chunks {codes.chunks}), "
                f"expected ({n}, {d}) in chunks of {chunk_rows}: delete it or use another run folder"
            )
        if DIGEST not in group:  # a store begun before digests: its finished chunks stay unchecked
            add_digests(group, n_chunks, ["codes", "labels"] if "labels" in group else ["codes"])
        return group
    group.create_array("codes", shape=(n, d), chunks=(chunk_rows, d), dtype="float32", fill_value=np.nan)
    group.create_array("complete", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False)
    if with_labels:
        group.create_array("labels", shape=(n,), chunks=(chunk_rows,), dtype="int64", fill_value=-1)
    add_digests(group, n_chunks, ["codes", "labels"] if with_labels else ["codes"])
    return group


@torch.no_grad()
def encode_chunk(
    encoder: Any,
    data: ChunkedRows,
    store: Any,
    c: int,
    chunk_rows: int,
    batch_size: int,
    storage_options: dict | None = None,
) -> bool:
    """Encode rows of latent chunk ``c`` and store them, then mark the chunk complete.

    Returns False when the chunk was already complete (a retried task, a rerun).
    Runs the same in this process or as a Dask task; ``store`` may be a URL.
    """
    group = zarr.open_group(zarr_store(store, storage_options), mode="r+")
    complete = group["complete"]
    if complete[c]:
        return False
    encode = _resolve(encoder)
    lo, hi = c * chunk_rows, min(len(data), (c + 1) * chunk_rows)
    raw = data.rows(lo, hi)  # uint8 images stay uint8 until each batch is formed
    codes = torch.cat(
        [encode(to_float(raw[i : i + batch_size])).float().cpu() for i in range(0, hi - lo, batch_size)]
    ).numpy()
    if not np.isfinite(codes).all():
        raise LatentError(f"encoder produced NaN/inf codes for rows {lo}..{hi}: the autoencoder diverged")
    values = {"codes": codes}
    if "labels" in group:
        values["labels"] = np.asarray(data.label_rows(lo, hi), dtype=np.int64)
    write_chunk(group, c, lo, values)  # rows, digest, then the marker: finished only once all are stored
    return True


@torch.no_grad()
def _probe_dim(encoder: Any, data: ChunkedRows) -> int:
    return int(_resolve(encoder)(to_float(data.rows(0, 1))).shape[1])


def _has_labels(data: ChunkedRows) -> bool:
    return bool(getattr(data, "has_labels", False) or getattr(data, "labels", None) is not None)


def extract_latents(
    encode: Any,
    data: torch.Tensor | ChunkedRows,
    store: Any,
    labels: torch.Tensor | None = None,
    chunk_rows: int = 4096,
    batch_size: int = 512,
    progress: bool = True,
    *,
    client=None,
    resources: dict | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Encode ``data`` with ``encode`` into the Zarr group at ``store``.

    ``encode`` is a callable batch -> codes (a module, ``model.encode``) or an
    :class:`EncoderRef` that workers load themselves. ``data`` is a float tensor
    (with optional ``labels``) or a chunked dataset (a lazy ``ZarrDataset`` or an
    in-memory ``Dataset``, with its own labels). ``store`` is a Zarr store or a
    URL. With a Dask ``client`` each chunk is a task; ``resources`` annotates the
    tasks (``{"GPU": 1}`` keeps them on GPU workers); a callable encoder is
    scattered to the workers once, and an in-memory dataset too. Returns counts
    of chunks written and skipped (skipped = finished earlier).
    """
    if isinstance(data, torch.Tensor):
        data = Dataset("tensor", data, labels, chunk_rows=chunk_rows)
    n = len(data)
    if client is None:
        d = _probe_dim(encode, data)
    else:
        d = client.submit(_probe_dim, encode, data, pure=False, resources=resources).result()
    group = _open_or_create(zarr_store(store, storage_options), n, d, chunk_rows, _has_labels(data))
    done = np.asarray(group["complete"][:])
    todo = [c for c in range(len(done)) if not done[c]]
    written = 0
    with Progress(len(todo), "latents", enabled=progress, unit="chunk") as bar:
        if client is None:
            for c in todo:
                written += encode_chunk(encode, data, store, c, chunk_rows, batch_size, storage_options)
                bar.update(1)
        else:
            from distributed import as_completed

            from vegan.cluster import Tasks

            tasks = Tasks(client)
            enc = encode if isinstance(encode, EncoderRef) else tasks.scatter(encode)
            src = tasks.scatter(data) if isinstance(data, Dataset) else data
            futures = [
                client.submit(
                    encode_chunk,
                    enc,
                    src,
                    store,
                    c,
                    chunk_rows,
                    batch_size,
                    storage_options,
                    pure=False,
                    retries=2,
                    resources=resources,
                )
                for c in todo
            ]
            try:
                for fut in as_completed(futures):
                    written += bool(fut.result())
                    bar.update(1)
            finally:
                client.cancel([f for f in futures if not f.done()])
    return {"n": n, "dim": d, "chunks": len(done), "chunks_written": written, "chunks_skipped": len(done) - written}


# ------------------------------------------------------------------ reading
def open_latents(store) -> zarr.Group:
    try:
        return zarr.open_group(store=zarr_store(store, read_only=True), mode="r")
    except Exception as exc:
        raise LatentError(f"cannot open latent store {store}: {exc}") from exc


def _check_store(group: zarr.Group, store, expected_dim: int | None) -> None:
    if "codes" not in group or "complete" not in group:
        raise LatentError(f"{store} is not a vegan latent store (no 'codes'/'complete' arrays)")
    if not bool(np.all(group["complete"][:])):
        raise LatentError(f"latent store {store} is incomplete: rerun the latents stage")
    dim = group["codes"].shape[1]
    if expected_dim is not None and dim != expected_dim:
        raise LatentError(f"latent dimension mismatch: store has {dim}, model expects {expected_dim}")


def check_store(store, expected_dim: int | None = None) -> None:
    """Raise :class:`LatentError` unless ``store`` is a complete latent store (reads the markers, not the codes)."""
    _check_store(open_latents(store), store, expected_dim)


def load_codes(store, expected_dim: int | None = None) -> np.ndarray:
    """All codes as a float32 array, after checking the store is complete and finite (small runs only)."""
    group = open_latents(store)
    _check_store(group, store, expected_dim)
    codes = np.asarray(CheckedRows(group, "codes", store_url(store)).rows(0, group["codes"].shape[0]), np.float32)
    if not np.isfinite(codes).all():
        bad = int((~np.isfinite(codes)).any(axis=1).sum())
        raise LatentError(f"latent store {store} has {bad} rows with NaN/inf codes")
    return codes


@dataclass(frozen=True)
class CodeStats:
    """What :func:`vegan.ot.problem.fit_scaling` computes, plus per-dimension extremes.

    ``center`` is the mean code (float64, shape (d,)); ``scale`` is the largest
    sup-norm (``source="cube"``) or 2-norm (``"ball"``) of a centred code, or 1.0
    when every code is equal. Scaled targets are ``(y - center) / scale``.
    """

    n: int
    dim: int
    center: np.ndarray
    scale: float
    source: str
    lo: np.ndarray  # per-dimension minimum (float32 values, as float64)
    hi: np.ndarray  # per-dimension maximum


def code_stats(store, source: str = "cube", *, client=None, storage_options: dict | None = None) -> CodeStats:
    """Centre and scale of the codes in ``store``, streaming over its chunks.

    The same numbers, bit for bit, as ``fit_scaling(load_codes(store), source)``:
    both are :func:`vegan.ot.targets.fit_scaling`, which sums in float64 block by
    block (a fixed block layout), then takes the largest sup-norm (cube: ``max_j
    max(hi_j - c_j, c_j - lo_j)``, exact, from the same pass) or 2-norm (ball: a
    second pass) of the centred codes. Memory is one block per process; with a
    Dask ``client`` each block is a task and only O(d) floats per block come back.
    """
    from vegan.cluster import Tasks
    from vegan.ot.targets import TargetsError, ZarrTargets, fit_scaling

    if source not in ("cube", "ball"):
        raise ValueError(f"source must be 'cube' or 'ball', got {source!r}")
    store = zarr_store(store, storage_options, read_only=True)
    group = open_latents(store)
    _check_store(group, store, None)
    codes = group["codes"]
    src = ZarrTargets.from_array(codes)
    if src is None:  # a store workers cannot open (in memory): read it here, block by block
        if client is not None:
            raise LatentError(f"latent store {store} is not on a path or URL the Dask workers can open")
        src = codes
    try:
        fit = fit_scaling(src, source, Tasks(client))
    except TargetsError as exc:
        raise LatentError(f"latent store {store}: {exc}") from exc
    n, d = codes.shape
    return CodeStats(int(n), int(d), fit.center, fit.scale, source, fit.lo, fit.hi)
