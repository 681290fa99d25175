"""The `demo` preset's OT stage, old solver vs new, on the same codes, one shared fresh check.

    PYTHONPATH=<checkout> .venv/bin/python benchmarks/ot_demo_compare.py CODES.npy --which new|old --out OUT.json

``--which old`` runs the pre-Newton solver (Adam, the demo preset's OT settings:
20,000 -> 81,920 samples, lr 0.01, tol 0.8, 1e6-sample checks, 300 iterations)
from a checkout of that code (put it first on PYTHONPATH); ``--which new`` runs
``vegan.ot.solve(codes, tol=0.3)`` with its defaults. Both potentials are then
scored on the same i.i.d. uniform check set (seed 12345, ``--check-samples``),
outside the timed solve.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from vegan.ot import solve
from vegan.ot.assign import assign_counts


def shared_check(res, codes: np.ndarray, n_samples: int) -> dict:
    y = torch.from_numpy(res.scale_codes(codes))
    h = torch.from_numpy(np.asarray(res.h)).float()
    counts = torch.zeros(len(codes), dtype=torch.int64)
    k = -(-n_samples // 4096)
    for i in range(k):
        g = torch.Generator().manual_seed(12345 * 1_000_003 + i)
        x = torch.rand(4096, y.shape[1], generator=g) * 2 - 1
        counts += assign_counts(x, y, h, want_idx=False).counts
    w = counts.numpy() / (k * 4096)
    nu = np.full(len(codes), 1 / len(codes))
    err = np.abs(w - nu)
    n = len(codes)
    return {
        "max": float((err / nu).max()),
        "l1": float(err.sum()),
        "n_samples": k * 4096,
        "noise_on_max": math.sqrt(2 * math.log(2 * n)) * math.sqrt(n / (k * 4096)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("codes")
    ap.add_argument("--which", choices=["new", "old"], required=True)
    ap.add_argument("--check-samples", type=int, default=20_000_000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    codes = np.load(args.codes).astype(np.float64)
    if args.which == "old":
        kw = dict(
            n_samples=20000, max_samples=81920, max_iter=300, tol=0.8, eval_every=50, eval_samples=1000000, lr=0.01
        )
    else:
        kw = dict(tol=0.3)
    t = time.perf_counter()
    res = solve(codes, progress=False, **kw)
    seconds = time.perf_counter() - t
    out = {
        "which": args.which,
        "settings": kw,
        "solve_seconds": seconds,
        "iterations": res.iterations,
        "converged": bool(res.converged),
        "own_check": res.marginal_error,
        "shared_check": shared_check(res, codes, args.check_samples),
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
