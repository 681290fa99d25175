"""Damped Newton on the dual potential ``h``, with Monte Carlo noise accounting and one fresh check.

We minimise the convex energy ``E(h) = E_mu[max_i <x, y_i> + h_i] - <h, nu>``;
its gradient is ``w(h) - nu`` (``w_i`` = mu-mass of power cell ``i``) and its
Hessian is the weighted graph Laplacian ``L = D - A`` of adjacent cells, ``A_ij``
= face area / ``|y_i - y_j|`` (Kitagawa, Merigot and Thibert's damped Newton).
Both come from one pass of the kernel over the iteration's samples: counts give
``w``; samples whose two best cells score within ``margin`` of each other give
``A_ij ~ (#(i,j) + #(j,i)) / (2 N margin)`` (a finite difference across the face).
``L delta = w - nu`` is solved by Jacobi-preconditioned CG.

What replaces hand-tuned learning rates, patience and growth factors:

* **Damping** (KMT): a step is kept when the noise-corrected RMS relative cell
  error fell by ``tau / 4`` of itself (or is already below the noise);
  otherwise the step is retried from the same point with ``tau`` halved (or
  cut by up to 8x when the trial was that much worse). The first margin is
  calibrated before the first step.
* **Sample size from the noise**: the relative cell error of a batch of ``N``
  samples has noise variance ``(1 - nu_i) / (N nu_i)``. When the measured error
  is down to that noise, the batch doubles, up to ``max_samples`` (derived from
  ``n`` and ``tol`` unless given).
* **Polyak-Ruppert averaging** at the cap: a Newton step from the noise floor
  lands at ``h* - L^-1 noise``, so averaging K such iterates divides the error
  by ``sqrt(K)``; the averaged error is predicted from the known noise levels.
* **One fresh check**: when the prediction is below ``0.6 tol``, one fresh
  sample set (tag EVAL) sized so that its own noise is ``0.6 tol`` on the worst
  of the n cells measures the averaged potential; if it fails, averaging goes on
  and the next check waits for a tighter prediction.

The state is a plain dataclass and :meth:`NewtonSolver.step` maps a state to the
next one (OTT-JAX's style): samples of iteration ``t`` depend only on ``(seed,
t, slice)``, so a resumed solve replays the uninterrupted trajectory exactly,
and Dask solves see the single-process sample set whatever the worker count.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph  # noqa: F401  (sp.csgraph)
import torch

from vegan.checkpoint import CheckpointDir
from vegan.ot.counting import Evaluator
from vegan.ot.problem import TAG_EVAL, TAG_TRAIN, OTProblem, scale_targets, slice_size_for
from vegan.progress import Progress
from vegan.storage import Storage

# Share of the tolerance given to the averaged iterate's error and to the final check's
# noise: sqrt(0.6^2 + 0.6^2) = 0.85 < 1, so a check of an iterate at its prediction passes.
SPLIT = 0.6
# Each failed check asks for this much more accuracy before the next one.
RECHECK = 0.7
# Damping of the first step from the Voronoi start.
FIRST_DAMPING = 0.125
# Samples per cell in the default first batch. The first steps from the Voronoi start are
# far from the noise floor, so small batches lose nothing there and the batch doubles once
# they reach it: 16 per code reached a max error of 0.3 2.9x sooner than 64 on the demo's
# MNIST codes (65 s vs 189 s) and sooner on a d = 32 mixture (docs/BENCHMARKS.md).
FIRST_PER_CODE = 16
# A cell's sampled degree is trusted from this many (pooled) near-tie pairs on.
MIN_PAIRS = 8
# The error a report-only check (a solve stopped by max_iter) resolves, at the finest.
REPORT_TOL = 0.25


def noise_z(n: int) -> float:
    """Expected max of ``n`` standard normal magnitudes (upper bound): ``sqrt(2 ln 2n)``."""
    return math.sqrt(2 * math.log(2 * n))


def samples_for(problem: OTProblem, max_error: float) -> int:
    """Samples whose Monte Carlo noise on the max relative cell error is ``max_error``."""
    q = float(((1 - problem.nu) / problem.nu).max())
    return int(math.ceil(noise_z(problem.n) ** 2 * q / max_error**2))


def round_up(n_samples: int) -> tuple[int, int]:
    """``(slice_size, n_slices)`` covering ``n_samples``."""
    size = slice_size_for(n_samples)
    return size, -(-n_samples // size)


@dataclass
class SolverState:
    """Everything needed to continue a solve (saved in every checkpoint).

    Dtypes: the potentials (``h``, ``base_h``, ``base_step``, ``h_sum``) are float64: the
    kernel scores with float32 ``h``, but damped steps and the Polyak-Ruppert sum add small
    increments that float32 would round away. Pair indices are int32 (n < 2^31); pooled pair
    counts float64 (discounted sums over many iterations). At millions of codes these three
    or four n-vectors, plus the Newton step's CG vectors, are the driver's peak memory.
    """

    h: np.ndarray  # the point evaluated next
    n_samples: int
    margin: float
    damping: float = 1.0
    iteration: int = 0
    base_h: np.ndarray | None = None  # last accepted point, its Newton step and error
    base_step: np.ndarray | None = None
    base_signal: float = math.inf
    h_sum: np.ndarray | None = None  # Polyak-Ruppert sum of accepted iterates at the cap
    n_avg: int = 0
    avg_var: float = 0.0  # sum over averaged iterates of their max-error noise variance / z^2
    signal: float = math.inf
    hess_i: np.ndarray | None = None  # pooled near-tie pair counts (symmetric COO) and their 2 N margin
    hess_j: np.ndarray | None = None
    hess_c: np.ndarray | None = None
    hess_norm: float = 0.0
    checks: int = 0
    history: list[dict] = field(default_factory=list)
    last_eval: dict | None = None

    @property
    def h_out(self) -> np.ndarray:
        """The potential we report: the average once averaging started, else the last accepted point."""
        if self.n_avg:
            return self.h_sum / self.n_avg
        return self.h if self.base_h is None else self.base_h

    def to_dict(self) -> dict[str, Any]:
        # Arrays as tensors sharing their memory: torch.save writes tensor storage as is, while
        # numpy arrays are pickled through copies (measured: ~30 n-vectors of transient memory
        # per checkpoint, against ~4.5; the driver's peak at millions of codes).
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else copy.deepcopy(v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SolverState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items() if k in names})


def voronoi_potential(y: np.ndarray) -> np.ndarray:
    """``h_i = -|y_i|^2 / 2``: power cells become the Voronoi cells of the targets (a free, decent start)."""
    return -0.5 * (y.astype(np.float64) ** 2).sum(axis=1)


def marginal_error(problem: OTProblem, counts: np.ndarray, n_samples: int, iteration: int) -> dict[str, float]:
    """``max_i |w_i - nu_i| / nu_i`` and ``sum_i |w_i - nu_i|`` from counts of a fresh sample set."""
    # In place: one n-vector besides the counts (and one for the relative error), not four.
    err = counts / float(n_samples)
    err -= problem.nu
    np.abs(err, out=err)
    return {
        "iteration": iteration,
        "max": float((err / problem.nu).max()),
        "l1": float(err.sum()),
        "n_samples": int(n_samples),
    }


def check(problem: OTProblem, h: np.ndarray, evaluate: Evaluator, n_samples: int, iteration: int) -> dict:
    """The marginal error of ``h`` on a FRESH sample set (tag EVAL, never used for training)."""
    size, k = round_up(n_samples)
    return marginal_error(problem, evaluate(h, TAG_EVAL, iteration, k, size).counts, k * size, iteration)


def pool_pairs(
    state: "SolverState", pairs: np.ndarray, n: int, n_samples: int, margin: float, keep: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Near-tie pair counts pooled over iterations: ``keep`` times the old counts plus the new ones.

    One iteration at a few samples per cell sees only a couple of near-tie pairs per
    cell: its sampled graph falls apart into small components, on which the
    Laplacian is singular and CG returns huge steps (the 2026 demo regression).
    The Hessian moves slowly, so the counts of past iterations (discounted by
    ``keep``) are still good evidence: ``A_ij = C_ij / Z`` with ``C`` the pooled
    symmetric counts and ``Z`` the pooled ``2 N margin``.
    """
    # O(pairs) memory, no n-sized array: a pair (i, j) is the int64 key i * n + j; sorted unique keys
    # are the CSR (row, col) order the counts come out in. New counts are summed as exact
    # integers first, then the discounted old counts are added once, as (new + new.T) + old did.
    # Counts are float64 because they accumulate discounted sums over many iterations.
    i, j = pairs[0].astype(np.int64), pairs[1].astype(np.int64)
    keys, inverse = np.unique(np.concatenate([i * n + j, j * n + i]), return_inverse=True)
    del i, j
    counts = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    del inverse
    norm = 2.0 * n_samples * margin
    if state.hess_c is not None and keep > 0:
        old = state.hess_i.astype(np.int64) * n + state.hess_j
        union = np.union1d(keys, old)  # both sorted and unique
        total = np.zeros(len(union))
        total[np.searchsorted(union, keys)] = counts
        total[np.searchsorted(union, old)] += keep * state.hess_c
        keys, counts = union, total
        norm += keep * state.hess_norm
    live = counts >= 1e-3  # forget pairs not seen for many iterations
    keys = keys[live]
    # int32 indices: n < 2^31 codes; half the memory of the int64 keys.
    return (keys // n).astype(np.int32), (keys % n).astype(np.int32), counts[live], norm


def newton_direction(
    a: sp.csr_matrix,
    grad: np.ndarray,
    ridge: float = 1e-2,
    floor: float = 0.25,
    evidence: np.ndarray | None = None,
    pair_norm: float | None = None,
    overwrite_grad: bool = False,
) -> np.ndarray:
    """Solve ``(D - A + R) delta = grad`` (Jacobi-preconditioned CG, deterministic).

    ``a`` holds the sampled face weights ``A_ij`` (symmetric). The Laplacian is
    singular (shifting every ``h_i`` alike changes nothing) and its sampled
    version noisy, which the ridge ``R`` and the degree floor guard against:

    * a cell seen in fewer than ``MIN_PAIRS`` near-tie pairs (``evidence``: its
      pooled pair count, or ``pair_norm`` when ``a`` is the pooled counts divided
      by it, so a cell's count is its degree times ``pair_norm``; a nearly empty
      cell, typically) gets a degree of at least ``floor`` times the median:
      otherwise ``g_i / D_i`` would come from a ``D_i`` off by orders of magnitude.
      Well-sampled cells keep their own degree, which legitimately spans decades
      on clustered codes;
    * cells of the largest connected component of the sampled graph get a
      ridge of ``ridge D_i``; cells the samples did not connect to it get
      ``R_i = D_i`` (about half a Jacobi step), since on a small component the
      Laplacian says nothing about its overall level and CG would return the
      component's mean error divided by the ridge.

    ``overwrite_grad``: CG's residual starts as ``grad`` and is updated in its
    buffer (one n-vector less; ``grad`` is garbage afterwards).

    Memory: at millions of cells the driver's peak is here, so n-vectors are
    freed as soon as they are used and CG updates its 5 vectors in place (the
    same floating-point operations in the same order as the textbook loop).
    """
    n = grad.shape[0]
    deg = np.asarray(a.sum(axis=1)).ravel()
    typical = float(np.median(deg[deg > 0])) if np.any(deg > 0) else 1.0
    if evidence is not None:
        weak = evidence < MIN_PAIRS
    elif pair_norm is not None:
        weak = deg * pair_norm < MIN_PAIRS
    else:
        weak = np.ones(n, dtype=bool)
    np.copyto(deg, np.maximum(deg, floor * typical), where=weak)
    del weak
    _, label = sp.csgraph.connected_components(a, directed=False)
    main = label == np.bincount(label).argmax()
    del label
    diag = deg  # D_i (1 + ridge) on the main component, 2 D_i elsewhere
    diag *= np.where(main, 1 + ridge, 2.0)
    del deg, main

    stop = 1e-4 * float(np.sqrt(grad @ grad))
    x = np.zeros(n)
    r = grad if overwrite_grad else grad.copy()
    p = r / diag  # z = M^-1 r, the first search direction
    rz = float(r @ p)
    for _ in range(200):
        if math.sqrt(float(r @ r)) <= stop:
            break
        q = a @ p  # q's buffer then holds (D + R - A) p, alpha q, alpha p and z in turn
        _scaled_minus(diag, p, q)  # q = (D + R) p - A p
        alpha = rz / float(p @ q)
        _add_scaled(x, alpha, p)  # x += alpha p
        np.multiply(q, alpha, out=q)
        r -= q  # r -= alpha q
        np.divide(r, diag, out=q)  # z = M^-1 r
        rz_new = float(r @ q)
        p *= rz_new / rz
        p += q  # p = z + (rz_new / rz) p
        rz = rz_new
        del q  # released before the next a @ p allocates its result
    return x


# Elements per block of the element-wise updates that would otherwise need an n-vector temporary.
_BLOCK = 1 << 16


def _scaled_minus(d: np.ndarray, p: np.ndarray, q: np.ndarray) -> None:
    """``q = d * p - q`` in place, a block at a time (the same operations as the whole-array expression)."""
    for lo in range(0, len(q), _BLOCK):
        s = slice(lo, lo + _BLOCK)
        np.subtract(d[s] * p[s], q[s], out=q[s])


def _add_scaled(x: np.ndarray, alpha: float, p: np.ndarray) -> None:
    """``x += alpha * p`` in place, a block at a time."""
    for lo in range(0, len(x), _BLOCK):
        s = slice(lo, lo + _BLOCK)
        x[s] += alpha * p[s]


@dataclass(frozen=True)
class NewtonSolver:
    """Maths settings of a semi-discrete OT solve (execution is passed to :func:`run`).

    ``None`` sizes follow from ``n`` and ``tol``: the first batch has
    ``FIRST_PER_CODE`` samples per cell; the cap is 1/8 of what the averaged
    iterate needs (so averaging runs over >= 8 iterates); the final check is
    sized by its noise.
    """

    tol: float = 0.1
    max_iter: int = 300
    n_samples: int | None = None
    max_samples: int | None = None
    check_samples: int | None = None
    pair_share: float = 0.15  # share of samples whose two best cells lie within `margin`
    keep: float = 0.7  # weight of past iterations' near-tie pairs in the Hessian estimate

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        for name in ("n_samples", "max_samples", "check_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")
        if not 0 < self.pair_share < 1:
            raise ValueError(f"pair_share must be in (0, 1), got {self.pair_share}")

    # ------------------------------------------------------------ sizes
    def first_samples(self, problem: OTProblem) -> int:
        return self.n_samples or max(16384, FIRST_PER_CODE * problem.n)

    def cap_samples(self, problem: OTProblem) -> int:
        auto = samples_for(problem, SPLIT * self.tol) // 8
        return max(self.first_samples(problem), self.max_samples or auto)

    def check_size(self, problem: OTProblem) -> int:
        auto = samples_for(problem, SPLIT * self.tol)
        return min(auto, self.check_samples) if self.check_samples else auto

    # ------------------------------------------------------------ state
    def init(self, problem: OTProblem, h0: np.ndarray | None = None) -> SolverState:
        """The first state: ``h0``, or the Voronoi start ``-|y_i|^2 / 2``, computed in the buffer of the
        squared norms the problem hands over (:meth:`OTProblem.take_sq_norms`: not kept twice)."""
        if h0 is None:
            h = problem.take_sq_norms()
            h *= -0.5
        else:
            h = np.asarray(h0, dtype=np.float64).copy()
        # A first margin of 0.3 % of the score range; it adapts to `pair_share` within a few steps.
        spread = float(problem.max_abs_row_sum + np.ptp(h))
        # From the Voronoi start the full first Newton step overshot in every run we looked at
        # (demo codes at n = 2,000 and 10,000, grid2d): start at the damping it was accepted at.
        damping = FIRST_DAMPING if h0 is None else 1.0
        return SolverState(
            h=h, n_samples=self.first_samples(problem), margin=0.003 * max(spread, 1e-12), damping=damping
        )

    def done(self, state: SolverState) -> bool:
        ev = state.last_eval
        return ev is not None and ev["iteration"] == state.iteration and ev["max"] <= self.tol

    def predicted_error(self, state: SolverState, problem: OTProblem) -> float:
        """Predicted max relative error of ``h_out`` (noise of the averaged iterates)."""
        if not state.n_avg:
            return math.inf
        return noise_z(problem.n) * math.sqrt(state.avg_var) / state.n_avg

    def step(self, state: SolverState, problem: OTProblem, evaluate: Evaluator) -> SolverState:
        """Evaluate ``state.h``; accept or reject it; take the next (damped Newton) step; check when due."""
        t0 = time.perf_counter()
        it = state.iteration
        size, k = round_up(state.n_samples)
        n_used = size * k
        res = evaluate(state.h, TAG_TRAIN, it, k, size, state.margin)
        nu = problem.nu
        grad = res.counts / float(n_used)
        grad -= nu
        rel2 = float(np.mean((grad / nu) ** 2))
        noise2 = float(np.mean((1 - nu) / (n_used * nu)))
        signal = math.sqrt(max(0.0, rel2 - noise2))
        share = res.pairs.shape[1] / n_used
        energy = float(res.sums.sum() / n_used - state.h @ nu)
        empty = res.counts == 0
        pairs, res = res.pairs, None  # the counts (an n-vector) are not needed past here
        # Down to the Monte Carlo noise. While averaging, a full Newton step from the noise floor
        # lands about one noise level away from h* (that is the noise being averaged out), so
        # "below the noise" is a coin flip there: the plain test threw away every third iteration
        # at the cap (n = 1e4, d = 32). Only a step clearly above the floor is retried then.
        noisy = signal <= math.sqrt(noise2) * (2 if state.n_avg else 1)

        s = dataclasses.replace(state, iteration=it + 1, signal=signal)
        # Standard error of `signal` (delta method on the mean of squared relative errors).
        spread = math.sqrt((2 * noise2**2 + 4 * signal**2 * noise2) / problem.n) / (2 * max(signal, 1e-12))
        # A first margin far off the target share (all samples "near a tie" on tightly
        # clustered codes) gives a badly biased Hessian: recalibrate before the first step.
        calibrating = state.base_h is None and not 0.5 <= share / self.pair_share <= 2
        accepted = not calibrating and (
            state.base_h is None or noisy or signal <= (1 - state.damping / 4) * state.base_signal + 3 * spread
        )
        if accepted:
            s.hess_i, s.hess_j, s.hess_c, s.hess_norm = pool_pairs(
                state, pairs, problem.n, n_used, state.margin, self.keep
            )
            a = sp.coo_matrix((s.hess_c / s.hess_norm, (s.hess_i, s.hess_j)), shape=(problem.n,) * 2).tocsr()
            delta = newton_direction(a, grad, pair_norm=s.hess_norm, overwrite_grad=True)
            del a, grad
            s.base_h, s.base_step, s.base_signal = state.h, delta, signal
            # Grow the damping after a kept step, but not right after a retry (that
            # alternated kept 0.25 / rejected 0.5 steps on the demo codes), nor when the batch
            # doubles at the noise floor: a step from a gradient that is mostly noise lands about
            # one noise level away, which the doubled batch then resolves. On gmm 1e4 x 32 the
            # doubled damping (0.95) was rejected after each of the last three doublings and the
            # kept one (0.48) accepted: 54 of the first 200 s went to those trials.
            retried = bool(state.history) and not state.history[-1]["accepted"]
            cap = self.cap_samples(problem)
            doubling = noisy and state.n_samples < cap
            s.damping = state.damping if retried or doubling else min(1.0, 2 * state.damping)
            if empty.any():
                # Empty cells: an empty cell's gradient is exactly -nu_i, but the sampled Hessian has no
                # pair for it, so the Newton step alone moves it by nu_i over a floored degree: a cell
                # buried inside a tight cluster then stays empty for hundreds of iterations. On top of
                # the Newton step it jumps by its measured deficit (vegan.ot.counting.cell_deficits)
                # plus one near-tie margin, at the damping this step is taken at.
                cells = np.flatnonzero(empty)
                jump = evaluate.deficits(state.h, cells, it) + state.margin
                delta[cells] -= jump / s.damping
            if doubling:
                s.n_samples = min(cap, 2 * state.n_samples)
            elif noisy:  # at the cap and down to the noise: average the iterates
                s.h_sum = state.h.copy() if state.h_sum is None else state.h_sum + state.h
                s.n_avg = state.n_avg + 1
                s.avg_var = state.avg_var + float(((1 - nu) / nu).max()) / n_used
        elif not calibrating:  # backtrack: halve the damping, or more when the trial was far worse
            s.damping = state.damping * float(np.clip(state.base_signal / max(signal, 1e-300), 0.125, 0.5))
        # The margin follows the share of near-tie samples (the share grows ~linearly with it;
        # a saturated share says little, hence the wider range while calibrating).
        reach = 16.0 if calibrating else 4.0
        s.margin = state.margin * float(np.clip(self.pair_share / max(share, 1e-6), 1 / reach, reach))
        if s.base_h is not None:
            s.h = s.base_h - s.damping * s.base_step

        record = {
            "iteration": it + 1,
            "energy": energy,
            "rms_rel_error": math.sqrt(rel2),
            "signal": signal,
            "noise": math.sqrt(noise2),
            "n_samples": n_used,
            "margin": state.margin,
            "pair_share": share,
            "damping": state.damping,
            "accepted": bool(accepted),
            "averaged": s.n_avg,
            "empty_cells": int(empty.sum()),
        }
        pred = self.predicted_error(s, problem)
        if math.isfinite(pred):
            record["predicted_max_error"] = pred
        if pred <= SPLIT * self.tol * RECHECK**s.checks:
            s.last_eval = check(problem, s.h_out, evaluate, self.check_size(problem), it + 1)
            s.checks += 1
            record.update(
                max_rel_error=s.last_eval["max"], l1_rel_error=s.last_eval["l1"], eval_samples=s.last_eval["n_samples"]
            )
        record["seconds"] = time.perf_counter() - t0
        s.history = state.history + [record]
        return s

    def finish(self, state: SolverState, problem: OTProblem, evaluate: Evaluator) -> SolverState:
        """Make sure the reported potential has a fresh-sample error (when the loop stopped on max_iter).

        The loop did not converge, so this check only reports the error reached: it is sized
        to resolve errors down to ``REPORT_TOL`` (or ``tol`` if looser), not ``tol`` itself,
        which for a tiny ``tol`` would mean a practically endless check.
        """
        if state.last_eval is not None and state.last_eval["iteration"] == state.iteration:
            return state
        size = min(self.check_size(problem), samples_for(problem, SPLIT * max(self.tol, REPORT_TOL)))
        ev = check(problem, state.h_out, evaluate, size, state.iteration)
        return dataclasses.replace(state, last_eval=ev)


@dataclass
class OTResult:
    """Output of a solve: the potential and how well it meets the marginals.

    ``h`` is for the *scaled* targets ``(y - center) / scale``; use
    :meth:`scale_codes` before evaluating ``argmax_i <x, y_i> + h_i``.
    """

    h: np.ndarray  # (n,) float64
    center: np.ndarray  # (d,)
    scale: float
    source: str  # "cube" | "ball"
    nu: np.ndarray  # (n,) float64
    history: list[dict]
    converged: bool
    iterations: int
    marginal_error: dict  # max, l1, n_samples: measured on a fresh sample set
    # Where the counting ran: mode (local | samples | targets), target shards, workers (see solve).
    execution: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.h = np.asarray(self.h, dtype=np.float64)
        self.center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        if self.h.ndim != 1 or not np.isfinite(self.h).all():
            raise ValueError(
                f"h must be finite values, one per code (got shape {self.h.shape}; NaN or inf "
                "means the OT solve diverged or was not run)"
            )
        if not np.isfinite(self.center).all():
            raise ValueError("center contains NaN or inf")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {self.scale}")
        if self.source not in ("cube", "ball"):
            raise ValueError(f"source must be 'cube' or 'ball', got {self.source!r}")

    def scale_codes(self, y: Any) -> np.ndarray:
        """Codes mapped into the source domain, exactly as the solver saw them."""
        return scale_targets(np.asarray(y), self.center, self.scale)

    def unscale_codes(self, z: Any) -> np.ndarray:
        """Source-domain points back to the original latent space."""
        return np.asarray(z, dtype=np.float64) * self.scale + self.center


def run(
    solver: NewtonSolver,
    problem: OTProblem,
    evaluate: Evaluator,
    checkpoints: CheckpointDir | None = None,
    checkpoint_every: int = 10,
    progress: bool = False,
    h0: np.ndarray | None = None,
) -> OTResult:
    """Drive ``solver.step`` to convergence or ``max_iter``; resume from and write ``checkpoints``."""
    fingerprint = problem.fingerprint()
    state = _resume(checkpoints, fingerprint) or solver.init(problem, h0)

    def save(s: SolverState) -> None:
        if checkpoints is not None:
            checkpoints.save(s.iteration, {"state": s.to_dict(), "fingerprint": fingerprint})

    bar = Progress(solver.max_iter, "OT solve", enabled=progress, initial=state.iteration)
    try:
        while state.iteration < solver.max_iter and not solver.done(state):
            state = solver.step(state, problem, evaluate)
            if state.iteration % checkpoint_every == 0:
                save(state)
            post = {"n_samples": state.history[-1]["n_samples"], "rms": f"{state.history[-1]['rms_rel_error']:.3g}"}
            if state.last_eval is not None:
                post["max_err"] = f"{state.last_eval['max']:.3g}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    state = solver.finish(state, problem, evaluate)
    save(state)
    ev = state.last_eval
    return OTResult(
        h=state.h_out.copy(),
        center=problem.center.copy(),
        scale=problem.scale,
        source=problem.source,
        nu=problem.nu if not problem.nu.flags.writeable else problem.nu.copy(),  # uniform: shared, read-only
        history=list(state.history),
        converged=solver.done(state),
        iterations=state.iteration,
        marginal_error={"max": ev["max"], "l1": ev["l1"], "n_samples": ev["n_samples"]},
    )


def _resume(checkpoints: CheckpointDir | None, fingerprint: str) -> SolverState | None:
    if checkpoints is None:
        return None
    saved = checkpoints.load_latest()
    if saved is None:
        return None
    if saved.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoints in {checkpoints.storage.url} belong to another OT problem "
            "(different targets, weights, source or seed); use a fresh folder"
        )
    return SolverState.from_dict(saved["state"])


_ARRAYS = ("h", "center", "nu")


def save_result(storage: Storage, res: OTResult) -> None:
    """Write ``result.npz`` (arrays) then ``result.json`` (the rest; its presence marks completion)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: getattr(res, k) for k in _ARRAYS})
    storage.write_bytes("result.npz", buf.getvalue())
    meta = {f.name: getattr(res, f.name) for f in dataclasses.fields(res) if f.name not in _ARRAYS}
    storage.write_json("result.json", meta)


def load_result(storage: Storage) -> OTResult:
    """Read a result written by :func:`save_result`."""
    meta = storage.read_json("result.json")
    with np.load(io.BytesIO(storage.read_bytes("result.npz"))) as z:
        arrays = {k: z[k] for k in _ARRAYS}
    return OTResult(**arrays, **meta)
