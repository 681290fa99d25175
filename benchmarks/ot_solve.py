"""Time to a verified max relative cell error: our Newton solver vs OTT-JAX, POT and a pyOMT-style loop.

    .venv/bin/python benchmarks/ot_solve.py [--json] [--problem gmm:10000:32 ...] [--budget 120]
        [--solvers newton,newton-demo,pyomt,pot,ott] [--check-noise 0.05] [--first-check 4 | --at 60,180]
        [--first-per-code 16]
        [--plot docs/img/ot_solve.png]

Every solver runs on the same problem (uniform cube source, uniform weights,
targets scaled into the cube as ``vegan.ot.make_problem`` does) and is
snapshotted along its run; each snapshot's potential is scored by the
benchmark's OWN check: one fixed set of i.i.d. uniform points (torch, seed
12345, never used by any solver), drawn here only, sized so that its Monte Carlo
noise on the max relative error, ``sqrt(2 ln 2n) * sqrt(n / N)``, is
``--check-noise``. Check time is not counted in a solver's seconds; our
solver's own final fresh check IS (it is part of the solve).

Solvers (all on the same cores, same wall budget ``--budget`` seconds each):
* ``newton``: ``vegan.ot.NewtonSolver`` with its defaults (one kernel pass per
  iteration gives counts and the Hessian pairs).
* ``newton-demo``: the same solver with the ``demo`` preset's sample sizes
  (16 samples per code at first, 64 at most; tuned for its 10,000 codes).
* ``pyomt``: the published AE-OT / pyOMT loop on our kernel: Adam without bias
  correction, fixed lr, ONE Sobol batch reused every iteration, batch doubled
  after 30 iterations without energy progress, stop when ``|grad| < 1e-3 / sqrt(n)``... or the budget.
* ``pot``: POT's averaged SGD on the entropic semi-dual
  (``ot.stochastic.averaged_sgd_entropic_transport``) on a fixed source sample
  of ``100 n`` points (needs the dense ``100 n x n`` cost matrix; skipped with a
  reason when that exceeds ``--pot-max-bytes``), restarted with doubling
  iteration counts to draw its curve.
* ``ott``: OTT-JAX 0.6 ``SemidiscreteSolver`` (hard assignment, epsilon = 0,
  optax Adam) on CPU JAX, when ``ott-jax`` is installed (optional extra
  ``bench``); skipped with a reason otherwise.

Problems: ``gmm:N:D`` (a clustered Gaussian mixture: 20 clusters, spread 0.3)
or ``codes:PATH`` (a .npy or Zarr array of latent codes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from vegan.ot import LocalEvaluator, NewtonSolver, make_problem
from vegan.ot.assign import assign_counts, choose_chunking
from vegan.ot.problem import OTProblem, sample_slice
from vegan.ot.solver import noise_z, voronoi_potential

CHECK_SEED = 12345
SLICE = 4096
THRESHOLDS = (0.3, 0.1)


# ------------------------------------------------------------------ problems
def load_targets(spec: str) -> tuple[str, np.ndarray]:
    kind, _, rest = spec.partition(":")
    if kind == "gmm":
        n, d = (int(v) for v in rest.split(":"))
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(20, d))
        return f"gmm n={n} d={d}", centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    if kind == "codes":
        if rest.endswith(".npy"):
            y = np.load(rest)
        else:
            import zarr

            y = zarr.open_array(rest, mode="r")[...]
        return f"codes {Path(rest).name} n={len(y)} d={y.shape[1]}", np.asarray(y, dtype=np.float64)
    raise ValueError(f"unknown problem {spec!r}: use gmm:N:D or codes:PATH")


class SharedCheck:
    """The benchmark's own fresh i.i.d. uniform sample: max and L1 relative cell error of any h."""

    def __init__(self, problem: OTProblem, n_samples: int):
        self.problem, self.k = problem, -(-n_samples // SLICE)
        self.y = problem.targets()
        self.chunking = choose_chunking(problem.n, problem.d, "cpu")
        self.seconds = 0.0

    def __call__(self, h: np.ndarray) -> dict:
        t = time.perf_counter()
        ht = torch.as_tensor(h, dtype=torch.float32)
        counts = torch.zeros(self.problem.n, dtype=torch.int64)
        for i in range(self.k):
            g = torch.Generator().manual_seed(CHECK_SEED * 1_000_003 + i)
            x = torch.rand(SLICE, self.problem.d, generator=g) * 2 - 1
            counts += assign_counts(x, self.y, ht, chunking=self.chunking, want_idx=False).counts
        w = counts.numpy() / float(self.k * SLICE)
        err = np.abs(w - self.problem.nu)
        self.seconds += time.perf_counter() - t
        return {"max": float((err / self.problem.nu).max()), "l1": float(err.sum())}


class Curve:
    """Snapshots ``(solver seconds, error)``, untimed, on a geometric time grid from ``first`` or at ``at`` only.

    ``at`` is for checks sized for a tight tolerance, which cost minutes per snapshot.
    """

    def __init__(self, check: SharedCheck, first: float, factor: float = 2.0, at: list[float] | None = None):
        self.check, self.factor = check, factor
        self.at = sorted(at) if at else None
        self.next = self.at[0] if self.at else first
        self.points: list[dict] = []

    def maybe(self, seconds: float, h_fn, force: bool = False) -> None:
        """Snapshot when due; ``force`` (the start and the end of a run) only on the doubling grid."""
        if (force and not self.at) or seconds >= self.next:
            self.points.append({"seconds": seconds, **self.check(h_fn())})
            if self.at:
                self.next = next((t for t in self.at if t > seconds), math.inf)
            while self.next <= seconds:
                self.next *= self.factor


# ------------------------------------------------------------------- solvers
def demo_sizes() -> dict:
    """The ``demo`` preset's OT sample sizes (chosen for its 10,000 MNIST codes)."""
    from vegan.presets import PRESETS

    return {k: PRESETS["demo"]["ot"][k] for k in ("n_samples", "max_samples")}


def run_newton(problem: OTProblem, curve: Curve, budget: float, tol: float, **sizes: int) -> dict:
    solver = NewtonSolver(tol=tol, max_iter=10_000, **sizes)
    evaluate = LocalEvaluator(problem, problem.sampling, "cpu")
    state, spent = solver.init(problem), 0.0
    curve.maybe(0.0, lambda: state.h_out, force=True)
    while spent < budget and not solver.done(state):
        t = time.perf_counter()
        state = solver.step(state, problem, evaluate)
        spent += time.perf_counter() - t
        curve.maybe(spent, lambda state=state: state.h_out, force=solver.done(state))
    if not curve.points or curve.points[-1]["seconds"] != spent:
        curve.maybe(spent, lambda: state.h_out, force=True)
    return {
        "iterations": state.iteration,
        "converged": solver.done(state),
        "own_check": state.last_eval,
        "samples_per_iteration_last": state.history[-1]["n_samples"],
        "history": state.history,
    }


def run_pyomt(problem: OTProblem, curve: Curve, budget: float, lr: float = 1e-2, batch: int = 1 << 16) -> dict:
    """pyOMT (Lei et al.) as published: Adam without bias correction, fixed lr, one Sobol batch."""
    y = problem.targets()
    chunking = choose_chunking(problem.n, problem.d, "cpu")
    h = voronoi_potential(problem.y)
    m, v = np.zeros_like(h), np.zeros_like(h)
    best, stall, it, spent = math.inf, 0, 0, 0.0
    stop = 1e-3 / math.sqrt(problem.n)
    curve.maybe(0.0, lambda: h, force=True)
    while spent < budget:
        t = time.perf_counter()
        ht = torch.as_tensor(h, dtype=torch.float32)
        counts = torch.zeros(problem.n, dtype=torch.int64)
        energy = 0.0
        for i in range(batch // SLICE):  # the same Sobol points every iteration
            x = sample_slice(problem.d, SLICE, problem.sampling, tag=7, iteration=0, index=i)
            res = assign_counts(x, y, ht, chunking=chunking, want_idx=False)
            counts += res.counts
            energy += float(res.max_scores.sum())
        grad = counts.numpy() / batch - problem.nu
        energy = energy / batch - float(h @ problem.nu)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        h = h - lr * m / (np.sqrt(v) + 1e-8)
        it += 1
        if energy < best:
            best, stall = energy, 0
        else:
            stall += 1
        if stall >= 30:
            batch, best, stall = 2 * batch, math.inf, 0
        spent += time.perf_counter() - t
        curve.maybe(spent, lambda h=h: h)
        if np.linalg.norm(grad) < stop:
            break
    curve.maybe(spent, lambda: h, force=True)
    return {"iterations": it, "final_batch": batch, "lr": lr}


def run_pot(problem: OTProblem, curve: Curve, budget: float, max_bytes: float) -> dict:
    try:
        import ot
    except ImportError:
        return {"skipped": "POT (pot) is not installed"}
    n_source = 100 * problem.n
    if n_source * problem.n * 8 > max_bytes:
        return {
            "skipped": f"100 source points per cell needs a dense {n_source} x {problem.n} float64 cost "
            f"matrix ({n_source * problem.n * 8 / 2**30:.1f} GiB > --pot-max-bytes)"
        }
    from scipy.stats import qmc

    ys = problem.y.astype(np.float64)
    x = qmc.Sobol(problem.d, scramble=True, seed=0).random(n_source) * 2 - 1
    cost = ot.dist(x, ys) / 2
    a = np.full(n_source, 1 / n_source)
    reg = 0.02 * float(cost.mean())  # smaller underflows: POT does not stabilise exp(-(M - v)/reg)
    iters, spent = 1000, 0.0
    curve.maybe(0.0, lambda: voronoi_potential(problem.y), force=True)
    while spent < budget:
        t = time.perf_counter()
        v = ot.stochastic.averaged_sgd_entropic_transport(
            a, problem.nu, cost, reg, numItermax=iters, lr=1.0, random_state=0
        )
        spent += time.perf_counter() - t  # each point is a fresh run of `iters` steps; time = that run
        curve.points.append({"seconds": time.perf_counter() - t, **curve.check(v - 0.5 * (ys**2).sum(1))})
        iters *= 2
    return {"source_points": n_source, "reg": reg, "last_iterations": iters // 2}


def run_ott(problem: OTProblem, curve: Curve, budget: float, lr: float = 1e-2, batch: int = 16384) -> dict:
    try:
        import jax
        import jax.numpy as jnp
        import optax
        from ott.geometry.semidiscrete_pointcloud import SemidiscretePointCloud
        from ott.problems.linear.semidiscrete_linear_problem import SemidiscreteLinearProblem
        from ott.solvers.linear.semidiscrete import SemidiscreteSolver, SemidiscreteState
    except ImportError as exc:
        return {"skipped": f"ott-jax / jax not installed ({exc.name})"}

    def sampler(rng, shape, dtype=None):
        return jax.random.uniform(rng, shape, minval=-1.0, maxval=1.0, dtype=dtype or jnp.float32)

    ys = jnp.asarray(problem.y)
    geom = SemidiscretePointCloud(sampler, ys, epsilon=0.0)
    prob = SemidiscreteLinearProblem(geom, b=jnp.asarray(problem.nu, dtype=jnp.float32))
    solver = SemidiscreteSolver(
        num_iterations=1_000_000, batch_size=batch, optimizer=optax.adam(lr), error_eval_every=1_000_000
    )
    # OTT's cost is |x - y|^2: its g maps to our h as h = (g - |y|^2) / 2; start at our Voronoi h.
    g0 = jnp.zeros(problem.n, dtype=jnp.float32)
    state = SemidiscreteState(
        it=jnp.array(0),
        epsilon=jnp.nan,
        g=g0,
        g_ema=g0,
        opt_state=solver.optimizer.init(g0),
        losses=jnp.full((8,), jnp.inf),
        grad_norms=jnp.full((8,), jnp.inf),
        errors=jnp.full((1,), jnp.inf),
    )
    step = jax.jit(lambda rng, st: solver.step(rng, st, prob))
    y2 = (problem.y.astype(np.float64) ** 2).sum(1)
    key, it, spent = jax.random.PRNGKey(0), 0, 0.0

    def h_of(st):
        return (np.asarray(st.g_ema, dtype=np.float64) - y2) / 2

    step(key, state).g.block_until_ready()  # compile outside the budget
    curve.maybe(0.0, lambda: h_of(state), force=True)
    while spent < budget:
        t = time.perf_counter()
        state = step(jax.random.fold_in(key, it), state)
        state.g.block_until_ready()
        it += 1
        spent += time.perf_counter() - t
        curve.maybe(spent, lambda state=state: h_of(state))
    curve.maybe(spent, lambda: h_of(state), force=True)
    return {"iterations": it, "batch": batch, "lr": lr, "potential": "g_ema (OTT's default EMA 0.99)"}


# ------------------------------------------------------------------- summary
def summarise(points: list[dict], budgets: list[float]) -> dict:
    reach = {}
    for thr in THRESHOLDS:
        hit = next((p["seconds"] for p in points if p["max"] <= thr), None)
        reach[f"seconds_to_{thr}"] = hit
    within = {}
    for b in budgets:
        inside = [p for p in points if p["seconds"] <= b]
        within[f"max_error_within_{b:g}s"] = min((p["max"] for p in inside), default=None)
    return {**reach, **within}


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results):
        for name, r in res["solvers"].items():
            if r.get("curve"):
                ax.plot(
                    [max(p["seconds"], 0.1) for p in r["curve"]],
                    [p["max"] for p in r["curve"]],
                    marker="o",
                    ms=3,
                    label=name,
                )
        ax.axhline(res["check_noise"], color="grey", ls=":", label="check noise")
        for thr in THRESHOLDS:
            ax.axhline(thr, color="k", lw=0.5)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="solver wall seconds (2 shared CPU cores)",
            ylabel="max relative cell error (shared fresh check)",
            title=res["problem"],
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def seconds_list(text: str) -> list[float]:
    """``--at 60,180`` -> ``[60.0, 180.0]``; anything else is a usage error naming the value."""
    try:
        times = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}") from None
    if not all(t > 0 for t in times):
        raise argparse.ArgumentTypeError(f"snapshot seconds must be > 0, got {text!r}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--problem", action="append", default=None, help="gmm:N:D or codes:PATH (repeatable)")
    ap.add_argument("--solvers", default="newton,pyomt,pot,ott")
    ap.add_argument("--budget", type=float, default=120.0, help="wall seconds per solver and problem")
    ap.add_argument("--tol", type=float, default=0.1, help="tolerance our solver stops at")
    ap.add_argument(
        "--check-noise",
        type=float,
        default=0.05,
        help="Monte Carlo noise of the shared check on the max relative error",
    )
    ap.add_argument("--first-check", type=float, default=4.0, help="solver seconds of the first timed snapshot")
    ap.add_argument(
        "--at",
        type=seconds_list,
        default=None,
        help="snapshot only at these solver seconds (comma-separated), not on the doubling grid",
    )
    ap.add_argument(
        "--first-per-code",
        type=int,
        default=None,
        help="newton: first batch in samples per code (default: the solver's)",
    )
    ap.add_argument("--pot-max-bytes", type=float, default=1.5e9)
    ap.add_argument("--plot", default="docs/img/ot_solve.png")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    runners = {
        "newton": lambda p, c: run_newton(
            p, c, args.budget, args.tol, **({"n_samples": args.first_per_code * p.n} if args.first_per_code else {})
        ),
        "newton-demo": lambda p, c: run_newton(p, c, args.budget, args.tol, **demo_sizes()),
        "pyomt": lambda p, c: run_pyomt(p, c, args.budget),
        "pot": lambda p, c: run_pot(p, c, args.budget, args.pot_max_bytes),
        "ott": lambda p, c: run_ott(p, c, args.budget),
    }
    unknown = sorted(set(args.solvers.split(",")) - set(runners))
    if unknown:
        ap.error(f"unknown solver(s) {', '.join(unknown)}: choose from {', '.join(runners)}")
    budgets = [args.budget / 8, args.budget / 4, args.budget / 2, args.budget]
    results = []
    for spec in args.problem or ["gmm:10000:32", "gmm:60000:16"]:
        name, y = load_targets(spec)
        problem = make_problem(y)
        n_check = int(math.ceil(noise_z(problem.n) ** 2 * problem.n / args.check_noise**2))
        check = SharedCheck(problem, n_check)
        res = {
            "problem": name,
            "n": problem.n,
            "d": problem.d,
            "check_samples": check.k * SLICE,
            "check_noise": noise_z(problem.n) * math.sqrt(problem.n / (check.k * SLICE)),
            "budget_seconds": args.budget,
            "solvers": {},
        }
        for sname in args.solvers.split(","):
            curve = Curve(check, args.first_check, at=args.at)
            t = time.perf_counter()
            info = runners[sname](problem, curve)
            info["wall_with_checks"] = time.perf_counter() - t
            if "skipped" not in info:
                info.update(curve=curve.points, **summarise(curve.points, budgets))
            res["solvers"][sname] = info
            if not args.json:
                print(
                    f"{name} {sname}: " + json.dumps({k: v for k, v in info.items() if k not in ("curve", "history")}),
                    flush=True,
                )
        res["check_seconds_total"] = check.seconds
        results.append(res)
        if args.out:  # written after every problem, so a long run keeps what it measured
            Path(args.out).write_text(json.dumps({"problems": results, "plot": args.plot}))
    plot(results, args.plot)
    blob = json.dumps({"problems": results, "plot": args.plot})
    if args.out:
        Path(args.out).write_text(blob)
    if args.json:
        print(blob)


if __name__ == "__main__":
    main()
