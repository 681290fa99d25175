"""Adam on the dual potential ``h`` with a growing Monte Carlo sample and a marginal stopping rule.

We minimise the convex energy ``E(h) = E_mu[max_i <x, y_i> + h_i] - <h, nu>``
(the negative of the concave dual); its gradient is ``w(h) - nu`` where
``w_i(h)`` is the mu-mass of power cell ``i``. ``w`` is estimated from the
cell counts of a sample set that is a pure function of ``(seed, iteration,
slice)`` (see :mod:`vegan.ot.problem`).

The solver state is a plain dataclass and :func:`step` maps a state to the
next one (OTT-JAX's semidiscrete style), so checkpointing is ``asdict`` and a
resumed run replays the uninterrupted trajectory exactly.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from vegan.checkpoint import CheckpointDir
from vegan.config import OTConfig
from vegan.device import resolve_device
from vegan.ot.assign import assign, assign_counts, choose_chunking
from vegan.ot.problem import (
    TAG_EVAL,
    TAG_TRAIN,
    TAG_WARM,
    OTProblem,
    make_problem,
    sample_slice,
    scale_targets,
    slice_size_for,
)
from vegan.storage import Storage

# evaluate(h, tag, iteration, n_slices, slice_size) -> (counts int64 (n,), max-score sum per slice float64)
Evaluator = Callable[[np.ndarray, int, int, int, int], tuple[np.ndarray, np.ndarray]]

ADAM_EPS = 1e-12  # cell masses (gradients) can be ~1/n; a larger eps would damp small cells



def count_slices(
    y: torch.Tensor,
    h: np.ndarray,
    *,
    seed: int,
    tag: int,
    iteration: int,
    slices: range,
    slice_size: int,
    source: str,
    sampler: str,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Cell counts and per-slice max-score sums for some slices of one iteration.

    The single-process solver and every Dask worker call exactly this, slice by
    slice, so their results agree bit for bit whatever the worker count.
    """
    device = y.device
    ht = torch.as_tensor(h, dtype=torch.float32, device=device)
    chunking = choose_chunking(y.shape[0], y.shape[1], device)
    counts = torch.zeros(y.shape[0], dtype=torch.int64, device=device)
    sums = np.zeros(len(slices), dtype=np.float64)
    for k, index in enumerate(slices):
        x = sample_slice(
            y.shape[1], slice_size, seed=seed, tag=tag, iteration=iteration, index=index,
            source=source, sampler=sampler, device=device,
        )
        res = assign_counts(x, y, ht, chunking=chunking, precision=precision, want_idx=False)
        counts += res.counts
        sums[k] = res.max_scores.double().sum().item()
    return counts.cpu().numpy(), sums


def local_evaluator(problem: OTProblem, cfg: OTConfig) -> Evaluator:
    """In-process evaluator on ``cfg.device``."""
    y = problem.targets(resolve_device(cfg.device))

    def evaluate(h, tag, iteration, n_slices, slice_size):
        return count_slices(
            y, h, seed=cfg.seed, tag=tag, iteration=iteration, slices=range(n_slices),
            slice_size=slice_size, source=problem.source, sampler=cfg.sampler, precision=cfg.precision,
        )

    return evaluate


@dataclass
class SolverState:
    """Everything needed to continue a solve (saved in every checkpoint).

    There is no RNG state: iteration ``t``'s samples depend only on
    ``(seed, t, slice)``, so ``iteration`` is the sampler position.
    """

    h: np.ndarray
    m: np.ndarray
    v: np.ndarray
    n_samples: int
    slice_size: int
    lr: float
    h_ema: np.ndarray | None = None
    iteration: int = 0
    best_energy: float = math.inf
    stall: int = 0
    history: list[dict] = field(default_factory=list)
    last_eval: dict | None = None

    @property
    def h_out(self) -> np.ndarray:
        """The potential we report and evaluate: the EMA when enabled."""
        return self.h if self.h_ema is None else self.h_ema

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SolverState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def voronoi_potential(y: np.ndarray) -> np.ndarray:
    """``h_i = -|y_i|^2 / 2``: power cells become the Voronoi cells of the targets.

    A much better start than ``h = 0`` (where only targets on the convex hull
    own any mass), and it costs nothing.
    """
    return -0.5 * (y.astype(np.float64) ** 2).sum(axis=1)


def init_state(
    problem: OTProblem, cfg: OTConfig, h0: np.ndarray | None = None, lr: float | None = None
) -> SolverState:
    h = voronoi_potential(problem.y) if h0 is None else np.asarray(h0, dtype=np.float64).copy()
    n_samples = min(cfg.n_samples, cfg.max_samples)
    return SolverState(
        h=h,
        m=np.zeros_like(h),
        v=np.zeros_like(h),
        h_ema=h.copy() if cfg.ema is not None else None,
        n_samples=n_samples,
        slice_size=slice_size_for(n_samples),
        lr=cfg.lr if lr is None else lr,
    )


def n_slices(n_samples: int, slice_size: int) -> int:
    return -(-n_samples // slice_size)


def marginal_error(
    problem: OTProblem, h: np.ndarray, evaluate: Evaluator, cfg: OTConfig, iteration: int, slice_size: int,
    n_samples: int | None = None,
) -> dict[str, float]:
    """Max and L1 cell error on a FRESH sample set (tag EVAL, never used for training).

    ``max`` is ``max_i |w_i - nu_i| / nu_i``; ``l1`` is ``sum_i |w_i - nu_i|``
    (= the nu-weighted mean relative error, so it does not grow with n).
    """
    k = n_slices(cfg.eval_samples if n_samples is None else n_samples, slice_size)
    counts, _ = evaluate(h, TAG_EVAL, iteration, k, slice_size)
    w = counts / float(k * slice_size)
    err = np.abs(w - problem.nu)
    return {
        "iteration": iteration,
        "max": float((err / problem.nu).max()),
        "l1": float(err.sum()),
        "n_samples": k * slice_size,
    }


def staged_marginal_error(
    problem: OTProblem, h: np.ndarray, evaluate: Evaluator, cfg: OTConfig, iteration: int, slice_size: int
) -> dict[str, float]:
    """:func:`marginal_error` on 1/16, then 1/4 of the samples; the full check only when those could pass.

    A tight check is expensive (at n=1e4, tol 0.1 needs ~3e7 samples), and far
    from convergence it is wasted: if a cheaper estimate exceeds ``tol`` by more
    than 1.5x its Monte Carlo noise on the worst of n cells (``sqrt(2 ln 2n)``
    standard deviations), the full check cannot pass and is skipped. Each stage's
    samples are a prefix of the next one's, so nothing is drawn twice.
    """
    spread = 1.5 * math.sqrt(2 * math.log(2 * problem.n)) / math.sqrt(float(problem.nu.min()))
    for share in (16, 4):
        n_quick = cfg.eval_samples // share
        if n_quick < slice_size:
            continue
        quick = marginal_error(problem, h, evaluate, cfg, iteration, slice_size, n_samples=n_quick)
        if quick["max"] > cfg.tol + spread / math.sqrt(quick["n_samples"]):
            return quick
    return marginal_error(problem, h, evaluate, cfg, iteration, slice_size)


def step(state: SolverState, problem: OTProblem, cfg: OTConfig, evaluate: Evaluator) -> SolverState:
    """One Adam iteration on ``h`` (plus the marginal check when due); returns a new state."""
    t0 = time.perf_counter()
    it = state.iteration
    k = n_slices(state.n_samples, state.slice_size)
    n_used = k * state.slice_size
    counts, sums = evaluate(state.h, TAG_TRAIN, it, k, state.slice_size)
    w = counts / float(n_used)
    energy = float(sums.sum() / n_used - state.h @ problem.nu)
    grad = w - problem.nu

    b1, b2 = cfg.betas
    t = it + 1
    m = b1 * state.m + (1 - b1) * grad
    v = b2 * state.v + (1 - b2) * grad * grad
    h = state.h - state.lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + ADAM_EPS)
    h_ema = None if state.h_ema is None else cfg.ema * state.h_ema + (1 - cfg.ema) * h

    # Grow the sample when the energy estimate stops improving: the remaining
    # progress is below the Monte Carlo noise of the current sample size. Once
    # the sample is at its cap, shorten the step instead: Adam's normalised
    # steps keep h jittering by ~lr, which is what then limits the marginals.
    best, stall, n_samples, lr = state.best_energy, state.stall, state.n_samples, state.lr
    if energy < best:
        best, stall = energy, 0
    else:
        stall += 1
    if stall >= cfg.patience:
        if n_samples < cfg.max_samples:
            n_samples = min(cfg.max_samples, int(math.ceil(n_samples * cfg.growth)))
            best, stall = math.inf, 0
        elif lr > cfg.min_lr and cfg.lr_decay < 1:
            lr = max(cfg.min_lr, lr * cfg.lr_decay)
            best, stall = math.inf, 0

    new = dataclasses.replace(
        state, h=h, m=m, v=v, h_ema=h_ema, iteration=t, best_energy=best, stall=stall, n_samples=n_samples, lr=lr,
    )
    record = {
        "iteration": t,
        "energy": energy,
        "grad_norm": float(np.linalg.norm(grad)),
        "n_samples": n_used,
        "lr": state.lr,
    }
    if t % cfg.eval_every == 0:
        new.last_eval = staged_marginal_error(problem, new.h_out, evaluate, cfg, t, state.slice_size)
        record["max_rel_error"] = new.last_eval["max"]
        record["l1_rel_error"] = new.last_eval["l1"]
        record["eval_samples"] = new.last_eval["n_samples"]
    record["seconds"] = time.perf_counter() - t0
    new.history = state.history + [record]
    return new


def is_converged(state: SolverState, cfg: OTConfig) -> bool:
    ev = state.last_eval
    return ev is not None and ev["iteration"] == state.iteration and ev["max"] <= cfg.tol


def resolve_config(config: OTConfig | None, overrides: dict[str, Any]) -> OTConfig:
    """Config plus keyword overrides, validated (a misspelt override is an error)."""
    base = (config or OTConfig()).model_dump()
    unknown = set(overrides) - set(OTConfig.model_fields)
    if unknown:
        raise TypeError(f"unknown OTConfig field(s): {', '.join(sorted(unknown))}")
    return OTConfig.model_validate({**base, **overrides})


def warm_start_potential(problem: OTProblem, cfg: OTConfig, make_evaluator) -> tuple[np.ndarray, float]:
    """Initial ``h`` and step size from a solve on ~n/8 coarse targets (one Lloyd step from a subsample).

    Each fine target keeps its Voronoi potential plus the correction its coarse
    cell needed, ``h_i = -|y_i|^2/2 + (h_c + |c|^2/2)`` (Merigot's multiscale
    start), minus a per-group offset ``kappa_c``. Without the offset the start is
    poor in high dimension: a group's best member beats the centroid ``c`` by
    ``max_i <x - c, y_i - c> - |y_i - c|^2/2``, which grows with the group's
    spread, so spread-out groups swallow their neighbours. ``kappa_c`` is that
    excess averaged over the coarse cell (Monte Carlo), which puts the group
    boundaries back where the coarse solve had them on average.
    The fine solve starts at the coarse solve's final (decayed) step size: it
    starts close to the answer, and full-size Adam steps would first undo that.
    """
    n = problem.n
    m = max(2, n // 8)
    rng = np.random.default_rng([cfg.seed, TAG_WARM])
    y = torch.from_numpy(problem.y)
    centers = y[torch.from_numpy(np.sort(rng.choice(n, size=m, replace=False)))]
    group = assign(y, centers, torch.from_numpy(voronoi_potential(centers.numpy()).astype(np.float32)))
    group_np = group.numpy()
    sizes = np.bincount(group_np, minlength=m)
    sums = np.zeros((m, problem.d))
    np.add.at(sums, group_np, problem.y.astype(np.float64))
    keep = sizes > 0
    coarse_y = (sums[keep] / sizes[keep, None]).astype(np.float32)
    coarse_nu = np.bincount(group_np, weights=problem.nu, minlength=m)[keep]
    remap = np.cumsum(keep) - 1
    coarse = OTProblem(coarse_y, coarse_nu / coarse_nu.sum(), problem.center, problem.scale, problem.source)
    # Same samples per cell as the full solve, so the coarse solve costs ~m/n of an iteration.
    frac = len(coarse_y) / n
    ccfg = cfg.model_copy(update={
        "warm_start": False,
        "seed": cfg.seed + 1,
        "n_samples": max(1, int(cfg.n_samples * frac)),
        "max_samples": max(1, int(cfg.max_samples * frac)),
        "eval_samples": max(1, int(cfg.eval_samples * frac)),
    })
    state = init_state(coarse, ccfg)
    evaluate = make_evaluator(coarse, ccfg)
    while state.iteration < ccfg.max_iter and not is_converged(state, ccfg):
        state = step(state, coarse, ccfg, evaluate)
    hc = state.h_out
    correction = hc + 0.5 * (coarse_y.astype(np.float64) ** 2).sum(axis=1)
    fine_group = remap[group_np]
    h = voronoi_potential(problem.y) + correction[fine_group]
    h -= _group_excess(problem, coarse_y, hc, fine_group, h, cfg)[fine_group]
    return h, state.lr


def _group_excess(
    problem: OTProblem, coarse_y: np.ndarray, hc: np.ndarray, group: np.ndarray, h: np.ndarray, cfg: OTConfig,
    samples_per_target: int = 16,
) -> np.ndarray:
    """Mean over each coarse cell of (best member's score - the centroid's score)."""
    m = len(coarse_y)
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=m)
    starts = np.cumsum(sizes) - sizes
    width = int(sizes.max())
    # members[c, k]: k-th fine target of group c, padded with the group's first member.
    slot = np.minimum(np.arange(width)[None, :], sizes[:, None] - 1)
    members = torch.from_numpy(order[starts[:, None] + slot])
    y, hf = torch.from_numpy(problem.y).double(), torch.from_numpy(h)
    yc, hct = torch.from_numpy(coarse_y).double(), torch.from_numpy(hc)
    yc32, hc32 = yc.float(), hct.float()
    total, count = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    n_samples = samples_per_target * problem.n
    block = max(256, min(8192, 2**22 // (width * problem.d)))  # y[mem] stays under 32 MB
    for index, a in enumerate(range(0, n_samples, block)):
        x = sample_slice(problem.d, min(block, n_samples - a), seed=cfg.seed, tag=TAG_WARM, iteration=0,
                         index=index, source=problem.source, sampler=cfg.sampler).double()
        cell = assign(x, yc32, hc32, precision="float32")
        coarse_score = (x * yc[cell]).sum(1) + hct[cell]
        mem = members[cell]  # (b, width)
        fine = torch.einsum("bd,bkd->bk", x, y[mem]) + hf[mem]
        total.index_add_(0, cell, fine.amax(1) - coarse_score)
        count.index_add_(0, cell, torch.ones_like(coarse_score))
    return (total / count.clamp(min=1)).numpy()


def _make_evaluator(problem: OTProblem, cfg: OTConfig, client, y_raw: Any = None):
    """Local or Dask evaluator plus a close() callback (``y_raw``: lets workers read Zarr directly)."""
    if cfg.dask == "none" and client is None:
        return local_evaluator(problem, cfg), lambda: None
    from vegan.ot.distributed import DaskEvaluator

    ev = DaskEvaluator(problem, cfg, client, y_raw=y_raw)
    return ev, ev.close


def solve(
    y: Any,
    nu: Any = None,
    config: OTConfig | None = None,
    checkpoints: CheckpointDir | None = None,
    progress: bool = True,
    client=None,
    **overrides: Any,
) -> OTResult:
    """Solve the semi-discrete OT problem from the source measure to ``y`` (weights ``nu``).

    Resumes from the newest checkpoint in ``checkpoints`` when there is one
    (of the same problem), checkpoints every ``checkpoint_every`` iterations and
    at the end, and stops when the fresh-sample max relative cell error is
    ``<= tol`` or after ``max_iter`` iterations.
    """
    cfg = resolve_config(config, overrides)
    problem = make_problem(y, nu, cfg.source)
    fingerprint = problem.fingerprint()
    evaluate, close = _make_evaluator(problem, cfg, client, y_raw=y)
    try:
        state = _resume(checkpoints, fingerprint)
        if state is None:
            h0 = lr0 = None
            if cfg.warm_start:
                # The coarse solve shares the cluster (if any) that the full solve uses.
                shared = getattr(evaluate, "client", client)
                h0, lr0 = warm_start_potential(problem, cfg, lambda p, c: _make_evaluator(p, c, shared)[0])
            state = init_state(problem, cfg, h0, lr0)
        state = _run(state, problem, cfg, evaluate, checkpoints, fingerprint, progress)
    finally:
        close()
    return OTResult(
        h=state.h_out.copy(),
        center=problem.center.copy(),
        scale=problem.scale,
        source=problem.source,
        nu=problem.nu.copy(),
        history=list(state.history),
        converged=is_converged(state, cfg),
        iterations=state.iteration,
        marginal_error={"max": state.last_eval["max"], "l1": state.last_eval["l1"],
                        "n_samples": state.last_eval["n_samples"]},
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
            "(different targets, weights or source); use a fresh folder"
        )
    return SolverState.from_dict(saved["state"])


def _run(state, problem, cfg, evaluate, checkpoints, fingerprint, progress) -> SolverState:
    from tqdm.auto import tqdm

    def save(s: SolverState) -> None:
        if checkpoints is not None:
            checkpoints.save(s.iteration, {"state": s.to_dict(), "fingerprint": fingerprint})

    bar = tqdm(total=cfg.max_iter, initial=state.iteration, disable=not progress, desc="OT solve")
    try:
        while state.iteration < cfg.max_iter and not is_converged(state, cfg):
            state = step(state, problem, cfg, evaluate)
            if state.iteration % cfg.checkpoint_every == 0:
                save(state)
            bar.update(1)
            post = {"n_samples": state.history[-1]["n_samples"]}
            if state.last_eval is not None:
                post["max_err"] = f"{state.last_eval['max']:.3g}"
            bar.set_postfix(post, refresh=False)
    finally:
        bar.close()
    if state.last_eval is None or state.last_eval["iteration"] != state.iteration:
        # Report the final potential's error on fresh samples, whatever stopped the loop.
        state = dataclasses.replace(
            state, last_eval=marginal_error(problem, state.h_out, evaluate, cfg, state.iteration, state.slice_size)
        )
    save(state)
    return state


@dataclass
class OTResult:
    """Output of :func:`solve`: the potential and how well it meets the marginals.

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

    def scale_codes(self, y: Any) -> np.ndarray:
        """Codes mapped into the source domain, exactly as the solver saw them."""
        return scale_targets(np.asarray(y), self.center, self.scale)


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
