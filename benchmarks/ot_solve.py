"""Time and iterations to reach a max relative cell error, with and without warm start, vs POT.

    .venv/bin/python benchmarks/ot_solve.py [--json] [--n 10000] [--d 32] [--tol 0.1] [--eval-samples N]

Targets: n standard normal codes in d dimensions, uniform weights, cube source.
The error is measured as the solver measures it: ``max_i |w_i - nu_i| / nu_i``
on a fresh Sobol sample of ``--eval-samples`` points. That measurement has a
Monte Carlo floor of roughly ``4 / sqrt(eval_samples / n)``; keep it well below
``--tol`` (at n=1e4, tol=0.1 this needs ~1e8 samples per check).

POT's averaged SGD on the entropic semi-dual (``ot.stochastic``) is given the
same wall time as our cold solve (or ``--pot-seconds``) on a fixed sample of the source; its dual
``v`` becomes our ``h`` (``h_j = v_j - |y_j|^2 / 2`` for the cost
``|x - y|^2 / 2``) and is scored with the same fresh-sample error.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from vegan.config import OTConfig
from vegan.ot import solve
from vegan.ot.problem import make_problem
from vegan.ot.solver import local_evaluator, marginal_error


def first_reach(history: list[dict], tol: float) -> tuple[int | None, float | None]:
    """Iteration and elapsed seconds at the first check with max error <= tol."""
    elapsed = 0.0
    for rec in history:
        elapsed += rec["seconds"]
        if rec.get("max_rel_error", np.inf) <= tol:
            return rec["iteration"], elapsed
    return None, None


def run_ours(y, cfg: OTConfig, warm: bool) -> dict:
    t = time.perf_counter()
    res = solve(y, config=cfg, warm_start=warm, progress=True)
    total = time.perf_counter() - t
    loop = sum(r["seconds"] for r in res.history)
    it, secs = first_reach(res.history, cfg.tol)
    return {
        "warm_start": warm,
        "converged": res.converged,
        "iterations": res.iterations,
        "seconds_total": total,
        "seconds_warm_start": total - loop if warm else 0.0,
        "iterations_to_tol": it,
        "seconds_to_tol": None if secs is None else secs + (total - loop if warm else 0.0),
        "final_max_error": res.marginal_error["max"],
        "final_l1_error": res.marginal_error["l1"],
        "max_samples_used": max(r["n_samples"] for r in res.history),
    }


def run_pot(y, cfg: OTConfig, seconds: float, n_source: int) -> dict:
    """POT ASGD on the entropic semi-dual, time-boxed to ``seconds``; scored with our fresh-sample error."""
    import ot
    from scipy.stats import qmc

    problem = make_problem(y, None, cfg.source)
    ys = problem.y.astype(np.float64)
    x = qmc.Sobol(ys.shape[1], scramble=True, seed=cfg.seed).random(n_source) * 2 - 1
    cost = ot.dist(x, ys) / 2
    a = np.full(n_source, 1 / n_source)
    # POT does not stabilise exp(-(M - v)/reg): a smaller reg underflows to 0/0, and its
    # default step (reg * n_source) overflows; lr=1 with this reg stays finite.
    reg = 0.02 * float(cost.mean())
    t = time.perf_counter()
    ot.stochastic.averaged_sgd_entropic_transport(a, problem.nu, cost, reg, numItermax=2000, lr=1.0, random_state=0)
    per_iter = (time.perf_counter() - t) / 2000
    iters = max(2000, int(seconds / per_iter))
    t = time.perf_counter()
    v = ot.stochastic.averaged_sgd_entropic_transport(a, problem.nu, cost, reg, numItermax=iters, lr=1.0, random_state=0)
    spent = time.perf_counter() - t
    h = v - 0.5 * (ys**2).sum(axis=1)
    err = marginal_error(problem, h, local_evaluator(problem, cfg), cfg, 0, 4096)
    return {"method": "ot.stochastic.averaged_sgd_entropic_transport", "reg": reg, "source_points": n_source,
            "iterations": iters, "seconds": spent, "final_max_error": err["max"], "final_l1_error": err["l1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--tol", type=float, default=0.1)
    ap.add_argument("--eval-samples", type=int, default=None, help="default: 3200 per cell (floor ~0.07)")
    ap.add_argument("--max-iter", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--n-samples", type=int, default=20_000)
    ap.add_argument("--max-samples", type=int, default=1_000_000)
    ap.add_argument("--pot-source", type=int, default=16_384, help="source points for POT's discrete problem")
    ap.add_argument("--pot-seconds", type=float, default=None, help="cap on POT's wall time (default: our cold time)")
    args = ap.parse_args()
    y = np.random.default_rng(0).normal(size=(args.n, args.d))
    cfg = OTConfig(
        tol=args.tol, lr=args.lr, max_iter=args.max_iter, n_samples=args.n_samples, max_samples=args.max_samples,
        eval_samples=args.eval_samples or 3200 * args.n, eval_every=25, patience=10,
    )
    cold = run_ours(y, cfg, warm=False)
    warm = run_ours(y, cfg, warm=True)
    pot = run_pot(y, cfg, min(cold["seconds_total"], args.pot_seconds or float("inf")), args.pot_source)
    out = {"n": args.n, "d": args.d, "tol": args.tol, "eval_samples": cfg.eval_samples,
           "measurement_floor": 4 / np.sqrt(cfg.eval_samples / args.n), "cold": cold, "warm": warm, "pot": pot}
    if args.json:
        print(json.dumps(out))
        return
    print(f"n={args.n} d={args.d} tol={args.tol} eval_samples={cfg.eval_samples} "
          f"(measurement floor ~{out['measurement_floor']:.3f})")
    for r in (cold, warm):
        name = "warm start" if r["warm_start"] else "cold start"
        reach = (f"reached tol at iteration {r['iterations_to_tol']} in {r['seconds_to_tol']:.1f}s"
                 if r["iterations_to_tol"] else "did not reach tol")
        print(f"  {name}: {reach}; final max err {r['final_max_error']:.3f}, l1 {r['final_l1_error']:.4f}, "
              f"{r['iterations']} iterations, {r['seconds_total']:.1f}s total "
              f"(warm-start coarse solve {r['seconds_warm_start']:.1f}s)")
    print(f"  POT ASGD semi-dual ({pot['source_points']} source points, reg {pot['reg']:.2g}): "
          f"{pot['iterations']} iterations in {pot['seconds']:.1f}s -> max err {pot['final_max_error']:.3f}, "
          f"l1 {pot['final_l1_error']:.4f}")


if __name__ == "__main__":
    main()
