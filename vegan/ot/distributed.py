"""Dask execution of the solver's one expensive call: cell counts for an iteration's samples.

Two modes (``OTConfig.mode``; ``auto`` picks ``targets`` when all codes would take
more than ``TARGETS_SHARE`` of a worker's memory limit, else ``samples``):

* ``samples``: every worker holds all targets (loaded once: from the
  Zarr store the codes came from, or scattered with ``broadcast=True``) and
  counts its own contiguous range of sample slices, which it regenerates from
  ``(seed, iteration, slice)``. Only ``h`` goes out and ``int32`` counts plus
  per-slice score sums come back: O(n) bytes per worker per iteration.
* ``targets``: each worker holds one contiguous shard of targets (read from the
  store by the worker itself when the problem has no codes in memory) and scores
  the whole sample set against it, returning per-sample ``(max, argmax)``;
  shards are merged pairwise as a tree (lower shard wins ties, so the lowest
  global index wins as in the single-process kernel).

Both call :func:`vegan.ot.counting.count_slices` / the same kernel slice by
slice, so a solve gives the same ``h`` on any number of workers (the near-tie
pairs of the Newton step come back in slice order, and shards merge their top
two). This module imports the counting layer only, never the solver. A task lost
with its worker is rerun by the scheduler (``retries``); if the targets
themselves were lost, they are scattered again and the iteration resubmitted.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from vegan.cluster import Tasks
from vegan.device import resolve_device
from vegan.ot.assign import assign_counts, choose_chunking
from vegan.ot.counting import Counts, cell_deficits, count_slices, hidden_best_scores, hidden_gaps, hidden_slices
from vegan.ot.problem import OTProblem, Sampling, sample_slice
from vegan.ot.targets import load_rows

log = logging.getLogger(__name__)

TASK_RETRIES = 3
RESUBMITS = 3

# Samples mode keeps all targets on every worker: chosen when they take at most this share
# of a worker's memory limit. Bytes per target value while a worker scores them: the float32
# rows, the kernel's float32 working copy (with the h column) and its float64 transient when
# it first sees a tensor (vegan.ot.assign._target_part). Measured at 4e6 x 64 codes: 8 bytes
# per value let two 2 GiB workers holding two 1e6-row shards each pass 95 % and be restarted.
TARGETS_SHARE = 0.25
BYTES_PER_VALUE = 16


def _worker_setup() -> None:
    """One BLAS thread per worker: Dask runs one task per core."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def choose_mode(n: int, d: int, memory_limit: int | None) -> str:
    """``samples`` when all targets fit a worker comfortably (or no limit is known), else ``targets``."""
    if not memory_limit:
        return "samples"
    return "samples" if n * d * BYTES_PER_VALUE <= TARGETS_SHARE * memory_limit else "targets"


def n_shards(n: int, d: int, workers: int, memory_limit: int | None) -> int:
    """Target shards: one per worker, more when a worker's share would not fit its memory budget."""
    need = n * d * BYTES_PER_VALUE
    per = int(TARGETS_SHARE * memory_limit) if memory_limit else need
    return max(1, min(n, max(workers, -(-need // max(per, 1)))))


def _targets_on_worker(ysrc: Any, device: str) -> torch.Tensor:
    """The scaled targets: a scattered array (zero copy) or a :class:`~vegan.ot.targets.TargetRows` read from Zarr."""
    return load_rows(ysrc, resolve_device(device))


def _count_task(ysrc, h, start, stop, *, sampling: Sampling, tag, iteration, slice_size, margin, device):
    _worker_setup()
    y = _targets_on_worker(ysrc, device)
    res = count_slices(
        y, h, sampling, tag=tag, iteration=iteration, slices=range(start, stop), slice_size=slice_size, margin=margin
    )
    return Counts(res.counts.astype(np.int32), res.sums, res.pairs)


def _shard_task(yshard, offset, h, n_slices, *, sampling: Sampling, tag, iteration, slice_size, margin, device):
    """Per-sample best two (score, global index) of all samples against one target shard."""
    _worker_setup()
    y = _targets_on_worker(yshard, device)
    ht = torch.as_tensor(h, dtype=torch.float32, device=y.device)
    chunking = choose_chunking(y.shape[0], y.shape[1], y.device)
    out = [], [], [], []
    for index in range(n_slices):
        x = sample_slice(y.shape[1], slice_size, sampling, tag=tag, iteration=iteration, index=index, device=y.device)
        res = assign_counts(x, y, ht, chunking=chunking, precision=sampling.precision, margin=margin)
        out[0].append(res.max_scores.cpu().numpy())
        out[1].append((res.idx + offset).to(torch.int32).cpu().numpy())
        if margin > 0:
            out[2].append(res.second_scores.cpu().numpy())
            out[3].append(torch.where(res.second >= 0, res.second + offset, -1).to(torch.int32).cpu().numpy())
    if margin <= 0:  # no runner-up wanted: -inf / -1 placeholders
        out[2].extend(np.full(len(b), -np.inf) for b in out[0])
        out[3].extend(np.full(len(b), -1, dtype=np.int32) for b in out[0])
    return tuple(np.concatenate(part) for part in out)


def _deficit_task(ysrc, h, cells, *, sampling: Sampling, iteration, device):
    """Mode samples: every worker holds all targets, so one task does what the local evaluator does."""
    _worker_setup()
    return cell_deficits(_targets_on_worker(ysrc, device), h, cells, sampling, iteration)


def _best_task(yshard, h, slices, *, sampling: Sampling, iteration, device):
    """Mode targets, first round: the hidden samples' best score against one shard (``slices``: for all codes)."""
    _worker_setup()
    y = _targets_on_worker(yshard, device)
    return hidden_best_scores(y, h, sampling, iteration, slices).cpu().numpy()


def _gap_task(yshard, h, cells, best, *, sampling: Sampling, iteration, device):
    """Mode targets, second round: the deficits of the shard's own ``cells`` against the global best."""
    _worker_setup()
    y = _targets_on_worker(yshard, device)
    return hidden_gaps(y, h, cells, torch.from_numpy(best).to(y.device), sampling, iteration)


def _merge_task(lo, hi):
    """Merge two shards' best two; ``lo`` holds the lower target indices and wins ties."""
    (bl, il, sl, jl), (bh, ih, sh, jh) = lo, hi
    take = bh > bl
    best, idx = np.where(take, bh, bl), np.where(take, ih, il)
    # Runner-up: the better of the losing best and the winner's own second.
    lose_v, lose_i = np.where(take, bl, bh), np.where(take, il, ih)
    oth_v, oth_i = np.where(take, sh, sl), np.where(take, jh, jl)
    keep = lose_v >= oth_v
    return best, idx, np.where(keep, lose_v, oth_v), np.where(keep, lose_i, oth_i)


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, near-equal, non-empty ranges covering ``range(total)``."""
    parts = max(1, min(parts, total))
    bounds = np.linspace(0, total, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class DaskEvaluator:
    """Evaluator ``(h, tag, iteration, n_slices, slice_size, margin) -> Counts`` on a Dask cluster.

    ``client``: the run's cluster (:func:`vegan.cluster.connect`, or a notebook's own client);
    the evaluator borrows it and never closes it.
    """

    def __init__(self, problem: OTProblem, client, mode: str = "samples", device: str = "auto"):
        if mode not in ("samples", "targets", "auto"):
            raise ValueError(f"mode must be 'samples', 'targets' or 'auto', got {mode!r}")
        self.problem, self.device = problem, device
        self.client = client
        self.resources = self._gpu_resources()
        self.memory_limit = self._tasks().worker_memory_limit()
        self.n_workers = self._tasks().n_workers()
        self.mode = choose_mode(problem.n, problem.d, self.memory_limit) if mode == "auto" else mode
        log.info("OT counting on the cluster: %s mode (n=%d, d=%d)", self.mode, problem.n, problem.d)
        self._publish()

    # ----------------------------------------------------------- targets
    def _gpu_resources(self) -> dict | None:
        """``{"GPU": 1}`` when some workers advertise a GPU resource (``dask worker --resources GPU=1``):
        the counting tasks then run only there, while CPU workers keep the light work."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None

    def _tasks(self) -> Tasks:
        """This iteration's executor (it lists the workers afresh: one may have died and been replaced)."""
        return Tasks(self.client, self.resources, TASK_RETRIES)

    def _publish(self) -> None:
        """Put the targets where the tasks will find them (once per solve, again after a loss).

        :meth:`~vegan.cluster.Tasks.scatter` redoes a scatter that a dying worker cut short."""
        p, tasks = self.problem, self._tasks()
        if self.mode == "samples":
            self.ysrc = p.rows() if p.y is None else tasks.scatter(p.y)
        else:
            parts = _split(p.n, n_shards(p.n, p.d, tasks.n_workers(), self.memory_limit))
            # Rows in a store: each shard task reads its own rows (nothing passes through here).
            self.shards = [
                (a, p.rows(a, b) if p.y is None else tasks.scatter(np.ascontiguousarray(p.y[a:b]), broadcast=False))
                for a, b in parts
            ]

    # ---------------------------------------------------------- counting
    def _kwargs(self, tag, iteration, slice_size, margin) -> dict:
        return dict(
            sampling=self.problem.sampling,
            tag=tag,
            iteration=iteration,
            slice_size=slice_size,
            margin=margin,
            device=self.device,
        )

    def _samples(self, h, tag, iteration, k, slice_size, margin):
        hf = h.astype(np.float32)
        tasks = self._tasks()
        kw = self._kwargs(tag, iteration, slice_size, margin)
        futures = [tasks.submit(_count_task, self.ysrc, hf, a, b, **kw) for a, b in _split(k, tasks.n_workers())]
        return Counts.concat(tasks.gather(futures), self.problem.n)

    def _targets(self, h, tag, iteration, k, slice_size, margin):
        hf = h.astype(np.float32)
        kw = self._kwargs(tag, iteration, slice_size, margin)
        tasks = self._tasks()
        level = [  # shard i prefers worker i, so its rows are loaded once per solve
            tasks.submit(_shard_task, ys, a, hf[a : a + len_], k, worker=i, **kw)
            for i, ((a, ys), len_) in enumerate(zip(self.shards, self._shard_lengths()))
        ]
        # Pairwise tree, order kept so lower shards stay on the left.
        root = tasks.tree(_merge_task, level, light=True)
        best, idx, sec_v, sec_i = root.result()
        counts = np.bincount(idx, minlength=self.problem.n).astype(np.int64, copy=False)
        sums = np.array(
            [torch.from_numpy(best[i * slice_size : (i + 1) * slice_size]).double().sum().item() for i in range(k)]
        )
        near = (sec_i >= 0) & (best - sec_v < margin) if margin > 0 else np.zeros(len(idx), dtype=bool)
        return Counts(counts, sums, np.stack([idx[near], sec_i[near]]).astype(np.int32))

    def _deficits(self, h, cells, iteration):
        tasks = self._tasks()
        kw = dict(sampling=self.problem.sampling, iteration=iteration, device=self.device)
        if self.mode == "samples":
            return tasks.gather([tasks.submit(_deficit_task, self.ysrc, h, cells, **kw)])[0]
        spans = [(a, a + len_) for (a, _), len_ in zip(self.shards, self._shard_lengths())]
        slices = hidden_slices(self.problem.n)  # sized for all the codes, not one shard
        firsts = [tasks.submit(_best_task, ys, h[a:b], slices, worker=i, **kw) for i, ((_, ys), (a, b)) in
                  enumerate(zip(self.shards, spans))]  # fmt: skip
        best = np.maximum.reduce(tasks.gather(firsts))
        gaps = [
            tasks.submit(_gap_task, ys, h[a:b], cells[(cells >= a) & (cells < b)] - a, best, worker=i, **kw)
            for i, ((_, ys), (a, b)) in enumerate(zip(self.shards, spans))
            if ((cells >= a) & (cells < b)).any()
        ]
        return np.concatenate(tasks.gather(gaps))  # shards in order: the cells' order

    def deficits(self, h: np.ndarray, cells: np.ndarray, iteration: int) -> np.ndarray:
        """:func:`vegan.ot.counting.cell_deficits` on the workers (the driver never reads the codes)."""
        return self._retry(self._deficits, f"OT iteration {iteration}'s empty-cell deficits", h, cells, iteration)

    def _shard_lengths(self) -> list[int]:
        starts = [a for a, _ in self.shards] + [self.problem.n]
        return [b - a for a, b in zip(starts[:-1], starts[1:])]

    def __call__(
        self, h: np.ndarray, tag: int, iteration: int, n_slices: int, slice_size: int, margin: float = 0.0
    ) -> Counts:
        run = self._samples if self.mode == "samples" else self._targets
        return self._retry(run, f"OT iteration {iteration}", h, tag, iteration, n_slices, slice_size, margin)

    def _retry(self, fn, what: str, *args):
        """``fn(*args)``, resubmitted (targets published again) up to RESUBMITS times when the cluster fails it."""
        for attempt in range(RESUBMITS + 1):
            try:
                return fn(*args)
            except Exception as exc:
                if attempt == RESUBMITS:
                    raise
                log.warning("%s failed on the cluster (%s: %s); resubmitting", what, type(exc).__name__, exc)
                self._publish()
        raise AssertionError("unreachable")

    def describe(self) -> dict:
        """The mode ``auto`` chose (or the one asked for), its target shards and the workers at the start."""
        shards = len(self.shards) if self.mode == "targets" else 1
        return {"mode": self.mode, "shards": shards, "workers": self.n_workers}

    def close(self) -> None:
        """Nothing to release: the client is borrowed, and the scattered targets go with their futures."""
