"""The solver's one expensive call: cell counts (and Hessian pairs) for one iteration's samples.

An *evaluator* is any callable ``(h, tag, iteration, n_slices, slice_size, margin) -> Counts``.
:class:`LocalEvaluator` runs it in this process; :class:`vegan.ot.distributed.DaskEvaluator`
on a cluster. Both call :func:`count_slices` slice by slice, so their results agree bit for
bit whatever the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vegan.device import resolve_device
from vegan.ot.assign import assign_counts, choose_chunking
from vegan.ot.problem import TAG_HIDDEN, OTProblem, Sampling, sample_slice

HIDDEN_SAMPLES = 16384
"""Source points that measure the empty cells' deficits (:func:`cell_deficits`)."""
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


def hidden_samples(d: int, sampling: Sampling, iteration: int, device) -> torch.Tensor:
    return sample_slice(d, HIDDEN_SAMPLES, sampling, tag=TAG_HIDDEN, iteration=iteration, index=0, device=device)


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

    ``min_x u_h(x) - (<x, y_i> + h_i)`` over ``HIDDEN_SAMPLES`` fresh points (tag HIDDEN): the gap
    between the cell's score and the winning one where it comes closest. The solver's rule for
    empty cells (:meth:`vegan.ot.solver.NewtonSolver.step`) is built on it.
    """
    x = hidden_samples(y.shape[1], sampling, iteration, y.device)
    return cell_gaps(y, h, cells, x, best_scores(y, h, x, sampling.precision))


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
