"""Where a solver iteration's time goes, against the kernel benchmark's call on the same samples.

    .venv/bin/python benchmarks/ot_iteration_rate.py [--problem gmm:10000:32] [--samples 1048576]
        [--warmup 6] [--repeats 3] [--threads 1] [--json]

One run, one process. First ``--warmup`` solver iterations at ``--samples`` samples
(defaults otherwise) bring ``h`` and the near-tie margin to where a real solve is; then,
interleaved ``--repeats`` times from that same state:

* ``kernel``: what ``benchmarks/ot_kernel.py`` times, ``assign_counts(x, y, h, want_idx=False)``
  on the iteration's own samples, drawn beforehand (no sampling, no margin);
* ``evaluate``: the solver's evaluator call (Sobol sampling, the kernel with the runner-up
  within the margin, near-tie pairs collected);
* ``step``: one whole ``NewtonSolver.step`` (the evaluator call, the pooled Hessian, CG, the
  empty-cell rule).

Times are this process's CPU seconds (``time.process_time``), so that a machine shared
with other jobs still gives true ratios; rates are ``2 N n d`` useful flops per second of
CPU time divided by the thread count. ``step_frac_of_kernel`` (kernel time / step
time) is the issue's figure. Best of the repeats each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ot_solve import load_targets

from vegan.ot import LocalEvaluator, NewtonSolver, make_problem
from vegan.ot.assign import assign_counts, choose_chunking
from vegan.ot.problem import TAG_TRAIN, sample_slice
from vegan.ot.solver import round_up


def timed(fn) -> float:
    """CPU seconds of this process (all its threads): unlike wall time, they hold on a shared machine."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", default="gmm:10000:32")
    ap.add_argument("--samples", type=int, default=1 << 20)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    name, y = load_targets(args.problem)
    problem = make_problem(y)
    solver = NewtonSolver(n_samples=args.samples, max_samples=args.samples)
    evaluate = LocalEvaluator(problem, problem.sampling, "cpu")
    state = solver.init(problem)
    t = time.perf_counter()
    for _ in range(args.warmup):
        state = solver.step(state, problem, evaluate)
    warmup_s = time.perf_counter() - t

    size, k = round_up(state.n_samples)
    n_used = size * k
    yt = problem.targets()
    ht = torch.as_tensor(state.h, dtype=torch.float32)
    chunking = choose_chunking(problem.n, problem.d, "cpu")
    it = state.iteration
    xs = [
        sample_slice(problem.d, size, problem.sampling, tag=TAG_TRAIN, iteration=it, index=i, device="cpu")
        for i in range(k)
    ]

    def kernel() -> None:
        for x in xs:
            assign_counts(x, yt, ht, chunking=chunking, precision=problem.sampling.precision, want_idx=False)

    times: dict[str, list[float]] = {"kernel": [], "evaluate": [], "step": []}
    for _ in range(args.repeats):
        times["kernel"].append(timed(kernel))
        times["evaluate"].append(timed(lambda: evaluate(state.h, TAG_TRAIN, it, k, size, state.margin)))
        # step() maps a state to a new one and leaves its argument as it was: no copy to time.
        times["step"].append(timed(lambda: solver.step(state, problem, evaluate)))
    best = {key: min(v) for key, v in times.items()}
    flops = 2.0 * n_used * problem.n * problem.d
    last = state.history[-1]
    out = {
        "problem": name,
        "threads": args.threads,
        "samples": n_used,
        "warmup_iterations": args.warmup,
        "warmup_s": warmup_s,
        "margin_pair_share": last["pair_share"],
        "empty_cells": last["empty_cells"],
        **{f"{key}_s": v for key, v in best.items()},
        **{f"{key}_gflops": flops / (v / args.threads) / 1e9 for key, v in best.items()},
        "step_frac_of_kernel": best["kernel"] / best["step"],
        "evaluate_frac_of_kernel": best["kernel"] / best["evaluate"],
        "newton_share_of_step": 1 - best["evaluate"] / best["step"],
    }
    if args.json:
        print(json.dumps(out))
        return out
    print(f"{name}, N = {n_used:,} samples, {args.threads} thread(s), after {args.warmup} iterations")
    print(f"  near-tie share {out['margin_pair_share']:.3f}, empty cells {out['empty_cells']}")
    for key in ("kernel", "evaluate", "step"):
        print(f"  {key:<9} {best[key]:7.3f} CPU s  {out[key + '_gflops']:6.1f} GFLOP/s")
    print(
        f"  step at {out['step_frac_of_kernel']:.2f} of the kernel's rate "
        f"(evaluate {out['evaluate_frac_of_kernel']:.2f}; "
        f"Newton work outside the evaluator {out['newton_share_of_step']:.2f} of a step)"
    )
    return out


if __name__ == "__main__":
    main()
