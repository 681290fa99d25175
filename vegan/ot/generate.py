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

Where the codes are: in this process (an array), or in a Zarr store that Dask workers read
themselves (:class:`vegan.ot.targets.ZarrTargets`). Every step is a task on
:class:`vegan.cluster.Tasks`, so the same functions run in the same order with and
without a cluster. Per block of source samples, each target shard gives its top ``k``
cells, the shards' lists are merged (exact float64 scores, lower index first on ties),
and a mixing task fetches the candidate codes by index (from the rows it holds, else from
the store) and mixes them. Centroids are kept as a sparse table of the cells that got a
Monte Carlo sample (its size is bounded by ``centroid_samples``, not by the codes); a cell
without one falls back to its projected code. :func:`generate_to_zarr` writes the codes
chunk by chunk (a chunk's completion marker after its rows; a rerun writes only the
missing chunks), so the driver holds per-block sample counts, never codes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vegan.cluster import Tasks
from vegan.ot.assign import Chunking, assign_counts, topk_cells
from vegan.ot.problem import TAG_CENTROIDS, TAG_GENERATE, Sampling, as_codes, sample_slice
from vegan.ot.solver import OTResult
from vegan.ot.targets import TargetRows, ZarrTargets, load_rows, rows_by_index, targets_token
from vegan.progress import Progress

log = logging.getLogger(__name__)

# Blocks per centroid task: one block (4,096 samples against every code) is already enough
# work per task, and more tasks keep every worker busy. The grouping is fixed, so the
# float64 sums are added in the same order with and without Dask.
_CENTROID_BLOCKS_PER_TASK = 1

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


def _domain_projection(y: np.ndarray, source: str) -> np.ndarray:
    if source == "cube":
        return np.clip(y, -1.0, 1.0)
    norm = np.linalg.norm(y, axis=-1, keepdims=True)
    return y / np.maximum(norm, 1.0)


# ------------------------------------------------------------ tasks (workers)
def _block_sizes(blocks: list[int], block_size: int, n_samples: int) -> list[int]:
    return [min(block_size, n_samples - b * block_size) for b in blocks]


def _centroid_cells(rows, h, offset, blocks, *, seed, block_size, n_samples, source, chunk):
    """Best cell (global index) and its score for every centroid sample of ``blocks``, against one shard."""
    yt = load_rows(rows)
    ht = torch.from_numpy(np.asarray(h)).float()
    best, idx = [], []
    for b, m in zip(blocks, _block_sizes(blocks, block_size, n_samples)):
        x = sample_source(m, yt.shape[1], source, seed, TAG_CENTROIDS, b)
        res = assign_counts(x, yt, ht, chunking=Chunking(max(1, m), chunk))
        best.append(res.max_scores.numpy())
        idx.append(res.idx.numpy() + offset)
    return np.concatenate(best), np.concatenate(idx)


def _merge_best(lo, hi):
    """Per-sample best of two shards; ``lo`` holds the lower indices and wins ties."""
    take = hi[0] > lo[0]
    return np.where(take, hi[0], lo[0]), np.where(take, hi[1], lo[1])


def _centroid_sums(cells, blocks, *, seed, block_size, n_samples, source, d):
    """Sparse per-cell sums and counts of the samples of ``blocks``: (cell ids sorted, sums, counts)."""
    idx = torch.from_numpy(np.asarray(cells[1]))
    x = torch.cat(
        [
            sample_source(m, d, source, seed, TAG_CENTROIDS, b)
            for b, m in zip(blocks, _block_sizes(blocks, block_size, n_samples))
        ]
    )
    ids, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    sums = torch.zeros((len(ids), d), dtype=torch.float64).index_add_(0, inverse, x.double())
    return ids.numpy(), sums.numpy(), torch.bincount(inverse, minlength=len(ids)).numpy()


def _merge_sums(a, b):
    """Union of two sparse tables of per-cell sums (float64, added in a fixed order)."""
    ids = np.union1d(a[0], b[0])
    sums = np.zeros((len(ids), a[1].shape[1]), dtype=np.float64)
    counts = np.zeros(len(ids), dtype=np.int64)
    for part in (a, b):
        pos = np.searchsorted(ids, part[0])
        sums[pos] += part[1]
        counts[pos] += part[2]
    return ids, sums, counts


def _centroid_table(table):
    """``(cell ids, float32 means, counts)`` of the cells that received samples."""
    ids, sums, counts = table
    return ids, (sums / counts[:, None]).astype(np.float32), counts


def _centroids_of(idx: np.ndarray, table, y_rows: np.ndarray, source: str) -> np.ndarray:
    """Centroids of cells ``idx`` from the sparse table; a cell without samples gets its projected code."""
    ids, means, _ = table
    pos = np.clip(np.searchsorted(ids, idx), 0, max(len(ids) - 1, 0))
    found = ids[pos] == idx if len(ids) else np.zeros(idx.shape, dtype=bool)
    fallback = _domain_projection(y_rows.astype(np.float64), source).astype(np.float32)
    return np.where(found[..., None], means[pos] if len(ids) else fallback, fallback)


def _topk(rows, h, offset, block, *, seed, block_size, k, source, chunk):
    """The ``k`` best cells (exact float64 scores, global indices) of every sample of ``block`` in one shard."""
    yt = load_rows(rows)
    x = sample_source(block_size, yt.shape[1], source, seed, TAG_GENERATE, block)
    scores, idx = topk_cells(
        x, yt, torch.from_numpy(np.asarray(h)), min(k, yt.shape[0]), chunking=Chunking(max(1, block_size), chunk)
    )
    return scores.numpy(), idx.numpy() + offset


def _merge_topk(a, b, k):
    """Top ``k`` of two shards' lists: score descending, lower index first on ties (as one unsharded pass)."""
    scores, idx = np.concatenate([a[0], b[0]], axis=1), np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((idx, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


def _mix(top, rows, table, block, *, seed, block_size, angle_threshold, source, center, scale):
    """Accepted samples of one block: ``(codes float32 in latent space, cells, positions in the block)``.

    Fetches the candidate codes by index (:func:`vegan.ot.targets.rows_by_index`).
    """
    idx = np.asarray(top[1])
    y_np = rows_by_index(rows, idx)  # (B, k, d) float32 scaled
    y_top = torch.from_numpy(y_np).double()
    top_t = torch.from_numpy(idx)

    def out(z: torch.Tensor, cells: torch.Tensor, pos: np.ndarray):
        codes = (z.numpy() * scale + center).astype(np.float32)  # OTResult.unscale_codes, row by row
        return codes, cells.numpy().astype(np.int64), pos.astype(np.int64)

    if idx.shape[1] == 1:  # no neighbours to compare or mix with: the plain OT map
        return out(y_top[:, 0], top_t[:, 0], np.arange(block_size))
    x = sample_source(block_size, y_top.shape[2], source, seed, TAG_GENERATE, block)
    kept = dihedral_angles(y_top) < angle_threshold
    kept[:, 0] = True
    accept = kept[:, 1:].any(dim=1)
    keep = accept.numpy()
    x, y_top, kept, top_t = x[accept].double(), y_top[accept], kept[accept], top_t[accept]
    cent = torch.from_numpy(_centroids_of(idx[keep], table, y_np[keep], source)).double()
    dist = (x[:, None, :] - cent).norm(dim=-1)
    w = kept / dist.clamp_min(1e-12)
    w = w / w.sum(dim=1, keepdim=True)
    return out(torch.einsum("bk,bkd->bd", w, y_top), top_t[:, 0], accept.nonzero()[:, 0].numpy())


def _positions(part) -> np.ndarray:
    return part[2]


def _pieces(parts, slices):
    """Rows ``slices[i]`` of block results ``parts[i]``, concatenated."""
    codes = np.concatenate([p[0][a:b] for p, (a, b) in zip(parts, slices)])
    cells = np.concatenate([p[1][a:b] for p, (a, b) in zip(parts, slices)])
    return codes, cells


def _write_chunk(url, storage_options, c, lo, hi, parts, slices) -> bool:
    """Write rows ``lo .. hi-1`` (chunk ``c``) of the generated codes, then its completion marker."""
    import zarr

    from vegan.data.zarrset import zarr_store
    from vegan.digests import write_chunk

    group = zarr.open_group(zarr_store(url, storage_options), mode="r+")
    if group["complete"][c]:
        return False
    codes, cells = _pieces(parts, slices)
    write_chunk(group, c, lo, {"codes": codes, "cells": cells})  # rows, digest, then the marker
    return True


# ------------------------------------------------------------------- the plan
class _Targets:
    """Scaled targets and potential as the tasks see them: shards (row ranges) and the full rows."""

    def __init__(self, y: Any, result: OTResult, tasks: Tasks, shards: int | None):
        self.tasks = tasks
        if isinstance(y, ZarrTargets):
            n, d = y.n, y.d
            full = TargetRows(y, result.center, result.scale, targets_token(y, result.center, result.scale))
            if shards is None:
                from vegan.ot.distributed import choose_mode, n_shards

                limit = tasks.worker_memory_limit()
                shards = 1 if choose_mode(n, d, limit) == "samples" else n_shards(n, d, tasks.n_workers(), limit)
            bounds = np.linspace(0, n, max(1, min(shards, n)) + 1).round().astype(int)
            spans = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            self.rows = full
            self.shards = [(a, full if (a, b) == (0, n) else full.part(a, b)) for a, b in spans]
        else:
            ys = result.scale_codes(y)
            n, d = ys.shape
            self.rows = tasks.keep(ys)
            self.shards = [(0, self.rows)]
            spans = [(0, n)]
        self.n, self.d = n, d
        h = _as_potential(result.h, n)
        # Kept, not scattered: a worker killed while it holds the only copy must not cancel the stage.
        self.h = [tasks.keep(np.ascontiguousarray(h[a:b])) for a, b in spans]

    def _prefer(self, shard: int) -> int | None:
        """Shard ``i`` prefers worker ``i`` when there are several shards (its rows stay loaded there)."""
        return shard if len(self.shards) > 1 else None

    def best_cells(self, fn, *args, **kw):
        """``fn`` per shard, merged as a fixed tree (top-1 by ``_merge_best``)."""
        parts = [
            self.tasks.submit(fn, rows, h, a, *args, worker=self._prefer(i), **kw)
            for i, ((a, rows), h) in enumerate(zip(self.shards, self.h))
        ]
        return self.tasks.tree(_merge_best, parts, light=True)

    def topk(self, block: int, k: int, **kw):
        parts = [
            self.tasks.submit(_topk, rows, h, a, block, k=k, worker=self._prefer(i), **kw)
            for i, ((a, rows), h) in enumerate(zip(self.shards, self.h))
        ]
        return self.tasks.tree(_merge_topk, parts, k, light=True)


def _centroid_table_future(tg: _Targets, n_samples, seed, source, chunk, block_size, progress):
    n_blocks = -(-n_samples // block_size)
    groups = [
        list(range(start, min(start + _CENTROID_BLOCKS_PER_TASK, n_blocks)))
        for start in range(0, n_blocks, _CENTROID_BLOCKS_PER_TASK)
    ]
    common = dict(seed=int(seed), block_size=block_size, n_samples=n_samples, source=source)
    parts = []
    with _progress(len(groups), "centroids", progress) as bar:
        for blocks in groups:
            cells = tg.best_cells(_centroid_cells, blocks, chunk=chunk, **common)
            parts.append(tg.tasks.submit(_centroid_sums, cells, blocks, d=tg.d, **common))
            bar.update(1)
    return tg.tasks.submit(_centroid_table, tg.tasks.tree(_merge_sums, parts, light=True), light=True)


def _progress(total: int, desc: str, enabled: bool) -> Progress:
    return Progress(total, desc, enabled=enabled, leave=False)


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


def _dense_centroids(table, y_scaled: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    ids, means, counts = table
    dense = _domain_projection(y_scaled.astype(np.float64), source).astype(np.float32)
    dense[ids] = means
    all_counts = np.zeros(len(y_scaled), dtype=np.int64)
    all_counts[ids] = counts
    empty = int((all_counts == 0).sum())
    if empty:
        log.info("%d of %d cells got no centroid sample; using their projected codes", empty, len(all_counts))
    return dense, all_counts


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
    unit = OTResult(h, np.zeros(y.shape[1]), 1.0, source, np.full(len(h), 1 / len(h)), [], False, 0, {})
    tasks = Tasks(client)
    tg = _Targets(y, unit, tasks, None)
    table = _centroid_table_future(tg, n_samples, seed, source, chunk, block_size, progress).result()
    return _dense_centroids(table, y, source)


def _check_generate(result, n, k, angle_threshold, d) -> None:
    if result.center.shape != (d,):
        raise ValueError(f"result.center must have {d} values (the code dimension), got shape {result.center.shape}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (cells considered per sample, the own cell included), got {k!r}")
    if not (angle_threshold > 0):
        raise ValueError(f"angle_threshold must be > 0 degrees, got {angle_threshold!r}")


def _prepare(y, result, n, k, angle_threshold, seed, block_size, chunk, client, resources, shards):
    if not isinstance(result, OTResult):  # before anything reads result.h
        raise TypeError(f"result must be a vegan.ot.OTResult, got {type(result).__name__}")
    if not isinstance(y, ZarrTargets):
        y = as_codes(y, "y").astype(np.float64)
    d = y.d if isinstance(y, ZarrTargets) else y.shape[1]
    _check_generate(result, n, k, angle_threshold, d)
    chunk = _check_common(result.source, seed, block_size, chunk)
    return y, chunk, _Targets(y, result, Tasks(client, resources), shards)


def _draw(tg: _Targets, table, result, n, k, angle_threshold, seed, block_size, chunk, max_draws, progress):
    """Blocks of accepted samples in block order until ``n``: ``(parts [(future, take)], drawn)``.

    Only each block's accepted positions come back here; its codes stay where they were made.
    """
    max_blocks = -(-max_draws // block_size)
    kw = dict(seed=int(seed), block_size=block_size, source=result.source)

    def start(block: int):
        top = tg.topk(block, int(k), chunk=chunk, **kw)
        part = tg.tasks.submit(
            _mix,
            top,
            tg.rows,
            table,
            block,
            angle_threshold=float(angle_threshold),
            center=result.center,
            scale=result.scale,
            **kw,
        )
        return part, tg.tasks.submit(_positions, part, light=True)

    parts, accepted, drawn, seen = [], 0, 0, 0

    def ahead() -> int:
        """Blocks still needed at the acceptance seen so far (optimistic before the first block):
        blocks submitted beyond them would run and be thrown away."""
        per_block = max(accepted / seen, 1.0) if seen else block_size
        return math.ceil((n - accepted) / per_block)

    with _progress(n, "generate", progress) as bar:
        blocks = tg.tasks.ordered(start, range(max_blocks), ahead)
        try:
            for part, positions in blocks:
                seen += 1
                pos = positions.result()
                take = min(len(pos), n - accepted)
                # Samples after the one that completes n were never needed: the
                # rejection rate counts only those up to it.
                drawn += int(pos[take - 1]) + 1 if take and accepted + take == n else block_size
                if take:
                    parts.append((part, take))
                accepted += take
                bar.update(take)
                if accepted == n or (accepted == 0 and drawn >= 10 * block_size):
                    break
        finally:
            blocks.close()
    if accepted < n:
        rate = 1.0 - accepted / drawn
        raise RuntimeError(
            f"generation rejected {rate:.2%} of {drawn} source samples and got only {accepted} of {n}: "
            f"almost every sample lies next to a singular set. Increase angle_threshold "
            f"(now {angle_threshold} degrees) or k (now {k}), or check the OT solve converged."
        )
    return parts, drawn


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
    with and without it. For codes that should stay in a Zarr store, use
    :func:`generate_to_zarr`.
    """
    if isinstance(y, ZarrTargets):
        raise TypeError("generate() returns its codes in memory: for codes in a Zarr store use generate_to_zarr")
    y, chunk, tg = _prepare(y, result, n, k, angle_threshold, seed, block_size, chunk, client, None, 1)
    y_scaled = result.scale_codes(y)
    if centroids is None:
        table = _centroid_table_future(tg, centroid_samples, seed, result.source, chunk, block_size, progress)
        dense, _ = _dense_centroids(tg.tasks.gather([table])[0], y_scaled, result.source)
    else:
        dense = as_codes(centroids, "centroids").astype(np.float32)
        if dense.shape != y.shape:
            raise ValueError(f"centroids must have shape {y.shape}, got {dense.shape}")
        table = (np.arange(len(dense)), dense, np.ones(len(dense), dtype=np.int64))
    max_draws = max(100 * n, 20 * block_size) if max_draws is None else max_draws
    parts, drawn = _draw(tg, table, result, n, k, angle_threshold, seed, block_size, chunk, max_draws, progress)
    blocks = tg.tasks.gather([p for p, _ in parts])
    codes, cells = _pieces(blocks, [(0, take) for _, take in parts])
    return GenerationResult(codes=codes, cells=cells, rejection_rate=1.0 - n / drawn, centroids=dense, n_drawn=drawn)


def generate_to_zarr(
    y: Any,
    result: OTResult,
    url: str,
    n: int = 2000,
    k: int = 8,
    angle_threshold: float = 20.0,
    seed: int = 1,
    centroid_samples: int = 200_000,
    client: Any | None = None,
    resources: dict | None = None,
    storage_options: dict | None = None,
    chunk_rows: int = 4096,
    shards: int | None = None,
    progress: bool = True,
    block_size: int = 4096,
    chunk: int | None = None,
    max_draws: int | None = None,
    attrs: dict | None = None,
) -> dict[str, Any]:
    """:func:`generate` into a Zarr group at ``url``: ``codes`` (n, d) float32, ``cells`` (n,) int64, by chunk.

    ``y`` may be a :class:`~vegan.ot.targets.ZarrTargets`: workers then read the codes
    themselves (all of them, or a shard each: ``shards``, by default from the workers'
    memory limit as for OT) and each output chunk is written by a task. A chunk's
    ``complete`` marker is set after its rows; a rerun writes only the chunks still
    missing and returns at once when all are there. Returns the counts and rates.
    """

    from vegan.data.zarrset import zarr_store

    y, chunk, tg = _prepare(y, result, n, k, angle_threshold, seed, block_size, chunk, client, resources, shards)
    store = zarr_store(url, storage_options)
    group = _open_output(store, n, tg.d, chunk_rows)
    n_chunks = math.ceil(n / chunk_rows)
    done = np.asarray(group["complete"][:])
    if done.all() and "rejection_rate" in group.attrs:
        return {"n": n, "chunks": n_chunks, "chunks_written": 0, **_summary(group.attrs)}
    table = _centroid_table_future(tg, centroid_samples, seed, result.source, chunk, block_size, progress)
    max_draws = max(100 * n, 20 * block_size) if max_draws is None else max_draws
    parts, drawn = _draw(tg, table, result, n, k, angle_threshold, seed, block_size, chunk, max_draws, progress)
    offsets = np.concatenate([[0], np.cumsum([take for _, take in parts])])
    writes = []
    for c in np.flatnonzero(~done):
        lo, hi = int(c * chunk_rows), int(min(n, (c + 1) * chunk_rows))
        use = [i for i in range(len(parts)) if offsets[i] < hi and offsets[i + 1] > lo]
        slices = [(int(max(lo, offsets[i]) - offsets[i]), int(min(hi, offsets[i + 1]) - offsets[i])) for i in use]
        writes.append(
            tg.tasks.submit(
                _write_chunk, url, storage_options, int(c), lo, hi, [parts[i][0] for i in use], slices, light=True
            )
        )
    written = sum(bool(w) for w in tg.tasks.gather(writes))
    info = {"rejection_rate": 1.0 - n / drawn, "n_drawn": int(drawn)}
    group.attrs.update({**(attrs or {}), **info})
    return {"n": n, "chunks": n_chunks, "chunks_written": written, **info}


def _summary(attrs) -> dict[str, Any]:
    return {"rejection_rate": float(attrs["rejection_rate"]), "n_drawn": int(attrs["n_drawn"])}


def _open_output(store, n: int, d: int, chunk_rows: int):
    import zarr

    from vegan.digests import DIGEST, add_digests

    group = zarr.open_group(store=store, mode="a")
    if "codes" in group:
        codes = group["codes"]
        if codes.shape != (n, d) or codes.chunks[0] != chunk_rows or "complete" not in group:
            raise ValueError(
                f"generated store {store} holds codes of shape {codes.shape} (chunks {codes.chunks}), "
                f"expected ({n}, {d}) in chunks of {chunk_rows}: delete it or use another run folder"
            )
        if DIGEST not in group:  # a store begun before digests: its finished chunks stay unchecked
            add_digests(group, math.ceil(n / chunk_rows), ["codes", "cells"])
        return group
    group.create_array("codes", shape=(n, d), chunks=(chunk_rows, d), dtype="float32", fill_value=np.nan)
    group.create_array("cells", shape=(n,), chunks=(chunk_rows,), dtype="int64", fill_value=-1)
    group.create_array("complete", shape=(math.ceil(n / chunk_rows),), chunks=(1,), dtype="bool", fill_value=False)
    add_digests(group, math.ceil(n / chunk_rows), ["codes", "cells"])
    return group
