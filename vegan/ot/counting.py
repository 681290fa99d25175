"""The solver's one expensive call: cell counts (and Hessian pairs) for one iteration's samples.

An *evaluator* is any callable ``(h, tag, iteration, n_slices, slice_size, margin) -> Counts``.
:class:`LocalEvaluator` runs it in this process; :class:`vegan.ot.distributed.DaskEvaluator`
on a cluster. Both call :func:`count_slices` slice by slice, so their results agree bit for
bit whatever the worker count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vegan.device import resolve_device
from vegan.ot.assign import assign_counts, choose_chunking
from vegan.ot.problem import TAG_HIDDEN, OTProblem, Sampling, sample_slice

HIDDEN_SLICE = 16384
"""Source points per slice of the hidden samples that measure the empty cells' deficits."""
HIDDEN_PER_CODE = 2
"""Hidden samples per code, at least (:func:`hidden_slices`)."""
BLOCK_ROWS = 65536
"""Targets scored at a time by :func:`best_scores`."""


@dataclass
class Counts:
    """What one iteration's samples say about ``h``.

    ``pairs`` (2, P) int32 lists (best, runner-up) cells of every sample whose
    two best scores are within ``margin`` (slice order), the raw material of
    the Hessian estimate; empty when ``margin == 0``.
    """

    counts: np.ndarray  # (n,) int64, samples per cell
    sums: np.ndarray  # (n_slices,) float64, sum of max scores per slice
    pairs: np.ndarray  # (2, P) int32

    @staticmethod
    def concat(parts: list["Counts"], n: int) -> "Counts":
        counts = np.zeros(n, dtype=np.int64)
        for p in parts:
            counts += p.counts
        return Counts(counts, np.concatenate([p.sums for p in parts]), np.concatenate([p.pairs for p in parts], axis=1))


class Evaluator(Protocol):
    def __call__(
        self, h: np.ndarray, tag: int, iteration: int, n_slices: int, slice_size: int, margin: float = 0.0
    ) -> Counts: ...

    def describe(self) -> dict:
        """``mode`` (``local``, ``samples`` or ``targets``), ``shards`` (target shards) and ``workers``."""
        ...

    def deficits(self, h: np.ndarray, cells: np.ndarray, iteration: int) -> np.ndarray:
        """:func:`cell_deficits` of ``cells`` (sorted indices), wherever the targets are."""
        ...


def hidden_slices(n: int) -> int:
    """Slices of ``HIDDEN_SLICE`` hidden samples for ``n`` codes: a power of two, ``HIDDEN_PER_CODE * n`` points
    or more.

    A lifted cell takes about one hidden sample's share of the source, so the count must grow with
    ``n``. With a fixed 16,384 at n = 60,000 (MNIST codes, d = 64, 3,964 empty cells) the lifted cells
    took 2.2x their target mass in all and emptied 5,541 others; every full lift was rejected and the
    damping halved each second iteration down to 1e-4. With 131,072 (2.2 per code) they took 0.41x
    and the error fell. A power of two keeps the Sobol points balanced; n <= 8,192 keeps one slice.
    """
    need = max(1, math.ceil(HIDDEN_PER_CODE * n / HIDDEN_SLICE))
    return 1 << (need - 1).bit_length()


def hidden_samples(d: int, sampling: Sampling, iteration: int, index: int, device) -> torch.Tensor:
    """Slice ``index`` of iteration ``iteration``'s hidden samples (tag HIDDEN)."""
    return sample_slice(d, HIDDEN_SLICE, sampling, tag=TAG_HIDDEN, iteration=iteration, index=index, device=device)


def hidden_best_scores(y: torch.Tensor, h: np.ndarray, sampling: Sampling, iteration: int, slices: int) -> torch.Tensor:
    """:func:`best_scores` of all ``slices`` slices of hidden samples, in slice order (the first round of the
    deficits when the targets are sharded: :class:`vegan.ot.distributed.DaskEvaluator`)."""
    best = []
    for k in range(slices):  # one slice of points in memory at a time
        best.append(best_scores(y, h, hidden_samples(y.shape[1], sampling, iteration, k, y.device), sampling.precision))
    return torch.cat(best)


def hidden_gaps(
    y: torch.Tensor, h: np.ndarray, cells: np.ndarray, best: torch.Tensor, sampling: Sampling, iteration: int
) -> np.ndarray:
    """:func:`cell_gaps` over all slices of hidden samples whose best scores are ``best`` (in slice order)."""
    gap = np.full(len(cells), np.inf)
    for k in range(len(best) // HIDDEN_SLICE):
        x = hidden_samples(y.shape[1], sampling, iteration, k, y.device)
        gap = np.minimum(gap, cell_gaps(y, h, cells, x, best[k * HIDDEN_SLICE : (k + 1) * HIDDEN_SLICE]))
    return gap


def best_scores(y: torch.Tensor, h: np.ndarray, x: torch.Tensor, precision) -> torch.Tensor:
    """``u_h(x) = max_i <x, y_i> + h_i`` (float64) over the rows of ``y``, a block of rows at a time."""
    best = torch.full((len(x),), -torch.inf, dtype=torch.float64, device=y.device)
    for lo in range(0, y.shape[0], BLOCK_ROWS):
        yb = y[lo : lo + BLOCK_ROWS]
        hb = torch.as_tensor(h[lo : lo + len(yb)], dtype=torch.float32, device=y.device)
        part = assign_counts(x, yb, hb, precision=precision, want_idx=False).max_scores
        best = torch.maximum(best, part.double())
    return best


def cell_gaps(y: torch.Tensor, h: np.ndarray, cells: np.ndarray, x: torch.Tensor, best: torch.Tensor) -> np.ndarray:
    """``min_x best(x) - (<x, y_i> + h_i)`` for each of ``cells`` (rows of ``y``), clamped at 0."""
    idx = torch.as_tensor(cells, dtype=torch.int64, device=y.device)
    own_y, own_h = y[idx], torch.as_tensor(h[cells], dtype=torch.float32, device=y.device)
    gap = torch.full((len(cells),), torch.inf, dtype=torch.float64, device=y.device)
    for lo in range(0, len(x), 1024):  # (1024 x |cells|) scores at a time
        own = x[lo : lo + 1024] @ own_y.T + own_h
        gap = torch.minimum(gap, (best[lo : lo + 1024, None] - own.double()).min(dim=0).values)
    return gap.clamp_min(0).cpu().numpy()


def cell_deficits(y: torch.Tensor, h: np.ndarray, cells: np.ndarray, sampling: Sampling, iteration: int) -> np.ndarray:
    """How much each of ``cells`` (empty ones) must raise its ``h`` to take a source point.

    ``min_x u_h(x) - (<x, y_i> + h_i)`` over the :func:`hidden_slices` fresh slices for all the codes
    ``y`` (tag HIDDEN): the gap between the cell's score and the winning one where it comes closest.
    The solver's rule for empty cells (:meth:`vegan.ot.solver.NewtonSolver.step`) is built on it.
    """
    gap = np.full(len(cells), np.inf)
    for k in range(hidden_slices(y.shape[0])):  # all targets here: one pass per slice
        x = hidden_samples(y.shape[1], sampling, iteration, k, y.device)
        gap = np.minimum(gap, cell_gaps(y, h, cells, x, best_scores(y, h, x, sampling.precision)))
    return gap


def count_slices(
    y: torch.Tensor,
    h: np.ndarray,
    sampling: Sampling,
    *,
    tag: int,
    iteration: int,
    slices: range,
    slice_size: int,
    margin: float = 0.0,
) -> Counts:
    """Counts, per-slice max-score sums and near-tie pairs for some slices of one iteration."""
    device = y.device
    ht = torch.as_tensor(h, dtype=torch.float32, device=device)
    chunking = choose_chunking(y.shape[0], y.shape[1], device)
    counts = torch.zeros(y.shape[0], dtype=torch.int64, device=device)
    sums = np.zeros(len(slices), dtype=np.float64)
    pairs = []
    for k, index in enumerate(slices):
        x = sample_slice(y.shape[1], slice_size, sampling, tag=tag, iteration=iteration, index=index, device=device)
        res = assign_counts(
            x, y, ht, chunking=chunking, precision=sampling.precision, want_idx=margin > 0, margin=margin
        )
        counts += res.counts
        sums[k] = res.max_scores.double().sum().item()
        if margin > 0:
            near = res.second >= 0
            pairs.append(torch.stack([res.idx[near], res.second[near]]).to(torch.int32).cpu().numpy())
    out = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), dtype=np.int32)
    return Counts(counts.cpu().numpy(), sums, out)


class LocalEvaluator:
    """In-process evaluator on one device."""

    def __init__(self, problem: OTProblem, sampling: Sampling, device: str = "auto"):
        self.problem, self.sampling = problem, sampling
        self.y = problem.targets(resolve_device(device))

    def __call__(self, h, tag, iteration, n_slices, slice_size, margin=0.0) -> Counts:
        return count_slices(
            self.y,
            h,
            self.sampling,
            tag=tag,
            iteration=iteration,
            slices=range(n_slices),
            slice_size=slice_size,
            margin=margin,
        )

    def deficits(self, h: np.ndarray, cells: np.ndarray, iteration: int) -> np.ndarray:
        return cell_deficits(self.y, h, cells, self.sampling, iteration)

    def describe(self) -> dict:
        """Where the counting ran (recorded in :attr:`vegan.ot.solver.OTResult.execution`)."""
        return {"mode": "local", "shards": 1, "workers": 0}

    def close(self) -> None:
        pass
