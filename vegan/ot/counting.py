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
from vegan.ot.problem import OTProblem, Sampling, sample_slice


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

    def describe(self) -> dict:
        """Where the counting ran (recorded in :attr:`vegan.ot.solver.OTResult.execution`)."""
        return {"mode": "local", "shards": 1, "workers": 0}

    def close(self) -> None:
        pass
