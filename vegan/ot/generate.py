"""Singularity-aware latent generation: the piecewise-linear extension of AE-OT.

The semi-discrete OT map from the source ``mu`` (uniform on ``[-1,1]^d`` or the
unit ball) to the codes is piecewise constant: every sample of a power cell
``W_i`` lands on the same code ``y_i``, so using it directly only reproduces the
training codes. AE-OT (An et al., ICLR 2020) and AE-OT-GAN extend it piecewise
linearly: a sample is mapped to a mix of the codes of the cells around it. Mixing
across the boundary between two clusters of codes would put codes in the empty
gap between them, where the decoder produces garbage; those boundaries are where
the Brenier potential ``u_h(x) = max_i <x, y_i> + h_i`` has a sharp crease (a
large dihedral angle between the supporting planes of neighbouring cells), so
they can be detected from ``h`` alone:

1. Score every cell at the sample, ``<x, y_i> + h_i``, and keep the top ``k``
   (``i0``, the best, is the sample's own cell). Scores are computed target chunk
   by target chunk with a running top-k merge, never as the full samples x cells
   matrix, so codes can be far more numerous than fit in one matmul.
2. The supporting plane of cell ``i`` has the normal ``n_i = (y_i, -1)/|(y_i, -1)|``;
   the dihedral angle between cells ``i0`` and ``j`` is ``arccos <n_i0, n_j>``.
   Neighbours under ``angle_threshold`` (degrees) lie on the same smooth sheet of
   the potential, i.e. in the same cluster of codes.
3. A sample with no such neighbour sits next to a singular set (a gap between
   clusters) and is rejected. Otherwise it maps to the mix of the kept cells'
   codes (``i0`` included) weighted by the inverse distance from the sample to
   each cell's centroid, so the map is continuous inside a cluster and fills its
   convex hull instead of repeating the training codes.

Everything happens in the solver's scaled space (``OTResult.scale_codes``, where
``h`` was solved) and the mixed code is mapped back with ``OTResult.unscale_codes``.
Source samples come from the problem's own sampler (:func:`vegan.ot.problem.sample_slice`:
one scrambled Sobol block per ``(seed, purpose, block index)``), so results do not
depend on the chunk size, on whether a Dask client is used, or on how many blocks
run in parallel.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from vegan.ot.assign import Chunking, assign, topk_cells
from vegan.ot.problem import TAG_CENTROIDS, TAG_GENERATE, Sampling, as_codes, sample_slice
from vegan.ot.solver import OTResult

log = logging.getLogger(__name__)

# Blocks per centroid task: enough work per Dask task, and a fixed grouping so the
# float64 sums are added in the same order with and without Dask.
_CENTROID_BLOCKS_PER_TASK = 8

# Score buffer budget (floats) for one sample block x one target chunk (64 MB).
_BUFFER_FLOATS = 1 << 24


@dataclass
class GenerationResult:
    """Generated codes and what is needed to audit or cache them."""

    codes: np.ndarray  # float32 (n, d), original latent space
    cells: np.ndarray  # int64 (n,), source cell i0 of each accepted sample
    rejection_rate: float  # share of drawn source samples rejected (near a singular set)
    centroids: np.ndarray  # float32 (n_cells, d), scaled-space centroids used
    n_drawn: int  # source samples drawn to get the n accepted ones


# ------------------------------------------------------------------ sampling
def sample_source(n: int, d: int, source: str, seed: int, tag: int, block: int) -> torch.Tensor:
    """``n`` float32 source samples for one block: the problem's sampler, keyed by ``(seed, tag, block)``."""
    return sample_slice(d, n, Sampling(seed=seed, source=source), tag=tag, iteration=block, index=0)


def _default_chunk(block_size: int) -> int:
    return max(1, _BUFFER_FLOATS // max(1, block_size))


def dihedral_angles(y_top: torch.Tensor) -> torch.Tensor:
    """Angles (degrees) between the plane of the first cell and each of the ``k`` cells.

    ``y_top`` is ``(B, k, d)`` float64 scaled codes. Uses ``2 atan2(|a-b|, |a+b|)``,
    which stays accurate for the sub-degree angles the threshold works with,
    where ``arccos`` of a dot product close to 1 loses most of its digits.
    """
    normals = torch.cat([y_top, -torch.ones_like(y_top[..., :1])], dim=-1)
    normals = normals / normals.norm(dim=-1, keepdim=True)
    n0 = normals[:, :1]
    return torch.rad2deg(2.0 * torch.atan2((normals - n0).norm(dim=-1), (normals + n0).norm(dim=-1)))


# ------------------------------------------------------------- block workers
def _centroid_task(
    blocks: list[int], y: np.ndarray, h: np.ndarray, seed: int, block_size: int, n_samples: int, source: str, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell sums and counts of the source samples of ``blocks`` (runs on a Dask worker too)."""
    yt, ht = torch.from_numpy(y), torch.from_numpy(h).float()
    n, d = yt.shape
    sums = torch.zeros((n, d), dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.long)
    for block in blocks:
        m = min(block_size, n_samples - block * block_size)
        x = sample_source(m, d, source, seed, TAG_CENTROIDS, block)
        cell = assign(x, yt, ht, chunking=Chunking(max(1, x.shape[0]), chunk))
        sums.index_add_(0, cell, x.double())
        counts += torch.bincount(cell, minlength=n)
    return sums.numpy(), counts.numpy()


def _generate_block(
    block: int,
    y: np.ndarray,
    h: np.ndarray,
    centroids: np.ndarray,
    seed: int,
    block_size: int,
    k: int,
    angle_threshold: float,
    source: str,
    chunk: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scaled-space codes, cells and in-block positions of the accepted samples of one block.

    Runs on a Dask worker too, hence plain arrays in and out.
    """
    yt, h64 = torch.from_numpy(y), torch.from_numpy(h)
    x = sample_source(block_size, yt.shape[1], source, seed, TAG_GENERATE, block)
    _, top = topk_cells(x, yt, h64, min(k, yt.shape[0]), chunking=Chunking(max(1, block_size), chunk))
    y_top = yt[top].double()  # (B, k, d)
    if top.shape[1] == 1:  # no neighbours to compare or mix with: the plain OT map
        return y_top[:, 0].numpy(), top[:, 0].numpy(), np.arange(block_size)
    kept = dihedral_angles(y_top) < angle_threshold
    kept[:, 0] = True
    accept = kept[:, 1:].any(dim=1)
    x, y_top, kept, top = x[accept].double(), y_top[accept], kept[accept], top[accept]
    dist = (x[:, None, :] - torch.from_numpy(centroids)[top].double()).norm(dim=-1)
    w = kept / dist.clamp_min(1e-12)
    w = w / w.sum(dim=1, keepdim=True)
    return torch.einsum("bk,bkd->bd", w, y_top).numpy(), top[:, 0].numpy(), accept.nonzero()[:, 0].numpy()


def _ordered(
    fn: Callable[..., Any], jobs: Iterable[tuple], static: dict[str, Any], client: Any | None, lookahead: int
) -> Iterator[Any]:
    """Results of ``fn(*job, **static)`` in job order, locally or on a Dask client.

    With a client, up to ``lookahead`` jobs run ahead of the consumer; when the
    consumer stops early the jobs still pending are cancelled.
    """
    if client is None:
        for job in jobs:
            yield fn(*job, **static)
        return
    pending: deque = deque()
    it = iter(jobs)
    try:
        while True:
            while len(pending) < lookahead:
                job = next(it, None)
                if job is None:
                    break
                pending.append(client.submit(fn, *job, **static, pure=False))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()


def _scatter(client: Any, *arrays: np.ndarray) -> list[Any]:
    """Ship arrays to every worker once. ``hash=False``: content-hashed keys would be
    shared with an earlier scatter of the same array, whose release drops the data."""
    return [client.scatter(a, broadcast=True, hash=False) for a in arrays]


def _lookahead(client: Any | None) -> int:
    return 1 if client is None else max(2, 2 * sum(client.nthreads().values()))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# --------------------------------------------------------------- validation
def _as_potential(h: Any, n: int) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (n,):
        raise ValueError(f"h must have shape ({n},) (one value per code), got {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("h contains NaN or infinite values: the OT solve diverged or was not run")
    return h


def _check_common(source: str, seed: int, block_size: int, chunk: int | None) -> int:
    if source not in ("cube", "ball"):
        raise ValueError(f"source must be 'cube' or 'ball', got {source!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if chunk is None:
        return _default_chunk(block_size)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return int(chunk)


def _domain_projection(y: np.ndarray, source: str) -> np.ndarray:
    if source == "cube":
        return np.clip(y, -1.0, 1.0)
    norm = np.linalg.norm(y, axis=1, keepdims=True)
    return y / np.maximum(norm, 1.0)


# ---------------------------------------------------------------- public API
def estimate_centroids(
    y_scaled: Any,
    h: Any,
    n_samples: int = 200_000,
    seed: int = 0,
    source: str = "cube",
    chunk: int | None = None,
    block_size: int = 4096,
    client: Any | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo centroids of the power cells in the source domain.

    Returns ``(centroids float32 (n, d), counts int64 (n,))``: the mean of the
    ``n_samples`` source samples that fall in each cell, and how many did.
    A cell that received no sample (mass below ~1/n_samples) gets its scaled code
    projected onto the source domain as a stand-in: OT from a uniform source to
    codes spread over that domain roughly keeps positions, so it is close to
    where the tiny cell lives, and it keeps the result NaN-free. The number of
    such cells is logged; raise ``n_samples`` if it matters.
    """
    y = as_codes(y_scaled, "y_scaled").astype(np.float32)
    h = _as_potential(h, y.shape[0])
    chunk = _check_common(source, seed, block_size, chunk)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    n_blocks = -(-n_samples // block_size)
    tasks = [
        (list(range(start, min(start + _CENTROID_BLOCKS_PER_TASK, n_blocks))),)
        for start in range(0, n_blocks, _CENTROID_BLOCKS_PER_TASK)
    ]
    y_arg, h_arg = (y, h) if client is None else _scatter(client, y, h)
    static = dict(
        y=y_arg, h=h_arg, seed=int(seed), block_size=block_size, n_samples=n_samples, source=source, chunk=chunk
    )
    sums = np.zeros(y.shape, dtype=np.float64)
    counts = np.zeros(y.shape[0], dtype=np.int64)
    with _progress(n_samples, "centroids", progress) as bar:
        for (blocks,), (s, c) in zip(tasks, _ordered(_centroid_task, tasks, static, client, _lookahead(client))):
            sums += s
            counts += c
            bar.update(min(n_samples, blocks[-1] * block_size + block_size) - blocks[0] * block_size)
    empty = counts == 0
    means = sums / np.maximum(counts, 1)[:, None]
    centroids = np.where(empty[:, None], _domain_projection(y.astype(np.float64), source), means)
    if empty.any():
        log.info("%d of %d cells got no centroid sample; using their projected codes", int(empty.sum()), len(empty))
    return centroids.astype(np.float32), counts


def generate(
    y: Any,
    result: OTResult,
    n: int = 2000,
    k: int = 8,
    angle_threshold: float = 20.0,
    seed: int = 1,
    centroid_samples: int = 200_000,
    centroids: Any | None = None,
    client: Any | None = None,
    progress: bool = True,
    block_size: int = 4096,
    chunk: int | None = None,
    max_draws: int | None = None,
) -> GenerationResult:
    """Draw ``n`` new codes with the singularity-aware piecewise-linear extension.

    ``y`` are the codes in the original latent space, ``result`` the
    :class:`vegan.ot.OTResult` solved for them (its potential, scaling and source).
    Source samples are drawn in blocks of ``block_size`` until ``n`` are accepted;
    the first ``n`` accepted (in block order) are returned, and the rejection rate
    is counted over the blocks used. ``k = 1`` (or a single code) turns the
    extension off: every sample maps to its cell's code and none is rejected.
    ``angle_threshold`` is in degrees; a huge value disables the rejection.
    Gives up with a ``RuntimeError`` after ``max_draws`` samples (default
    ``max(100 n, 20 block_size)``), or after 10 blocks with no accepted sample.
    ``client`` is an optional ``dask.distributed.Client``; results are identical
    with and without it.
    """
    if not isinstance(result, OTResult):
        raise TypeError(f"result must be a vegan.ot.OTResult, got {type(result).__name__}")
    y = as_codes(y, "y").astype(np.float64)
    n_cells, d = y.shape
    h = _as_potential(result.h, n_cells)
    source = result.source
    if result.center.shape != (d,):
        raise ValueError(f"result.center must have {d} values (the code dimension), got shape {result.center.shape}")
    chunk = _check_common(source, seed, block_size, chunk)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (cells considered per sample, the own cell included), got {k!r}")
    if not (angle_threshold > 0):
        raise ValueError(f"angle_threshold must be > 0 degrees, got {angle_threshold!r}")
    max_draws = max(100 * n, 20 * block_size) if max_draws is None else max_draws

    y_scaled = result.scale_codes(y)
    if centroids is None:
        centroids, _ = estimate_centroids(
            y_scaled,
            h,
            centroid_samples,
            seed=seed,
            source=source,
            chunk=chunk,
            block_size=block_size,
            client=client,
            progress=progress,
        )
    else:
        centroids = as_codes(centroids, "centroids").astype(np.float32)
        if centroids.shape != (n_cells, d):
            raise ValueError(f"centroids must have shape {(n_cells, d)}, got {centroids.shape}")

    if client is None:
        y_arg, h_arg, c_arg = y_scaled, h, centroids
    else:
        y_arg, h_arg, c_arg = _scatter(client, y_scaled, h, centroids)
    static = dict(
        y=y_arg,
        h=h_arg,
        centroids=c_arg,
        seed=int(seed),
        block_size=block_size,
        k=int(k),
        angle_threshold=float(angle_threshold),
        source=source,
        chunk=chunk,
    )
    max_blocks = -(-max_draws // block_size)
    codes, cells, accepted, drawn = [], [], 0, 0
    with _progress(n, "generate", progress) as bar:
        results = _ordered(_generate_block, ((b,) for b in range(max_blocks)), static, client, _lookahead(client))
        try:
            for c, i, pos in results:
                take = min(len(c), n - accepted)
                # Samples after the one that completes n were never needed: the
                # rejection rate counts only those up to it.
                drawn += int(pos[take - 1]) + 1 if accepted + take == n else block_size
                codes.append(c[:take])
                cells.append(i[:take])
                accepted += take
                bar.update(take)
                if accepted == n or (accepted == 0 and drawn >= 10 * block_size):
                    break
        finally:
            results.close()
    if accepted < n:
        rate = 1.0 - accepted / drawn
        raise RuntimeError(
            f"generation rejected {rate:.2%} of {drawn} source samples and got only {accepted} of {n}: "
            f"almost every sample lies next to a singular set. Increase angle_threshold "
            f"(now {angle_threshold} degrees) or k (now {k}), or check the OT solve converged."
        )
    out = result.unscale_codes(np.concatenate(codes))
    return GenerationResult(
        codes=out.astype(np.float32),
        cells=np.concatenate(cells).astype(np.int64),
        rejection_rate=1.0 - n / drawn,
        centroids=centroids,
        n_drawn=drawn,
    )
