"""How accurate must the OT be? FID of AE-OT samples against the OT's stopping tolerance (issue 22).

At a fixed autoencoder and fixed codes (a run whose ``ae`` and ``latents`` stages are done), the OT is
solved to each tolerance in turn, loosest first, each solve starting from the previous potential
(``ot.tol`` is the max relative cell error at the solver's own fresh-sample check). For each, codes
are generated with the run's ``generate`` settings, decoded, and scored with the run's ``eval``
settings against the same reference as the eval stage (the whole test split under
``eval.protocol: standard``). One row per tolerance: the verified max and L1 cell errors, iterations,
seconds, FID/KID/precision/recall. Writes a JSON table and a PNG plot of FID against both errors, and
says which of the two errors orders the FIDs better (Spearman rank correlation).

``--subset N`` solves for the first N codes only: the OT cost grows as ~n^2 / tol^2, so on 2 CPU
cores a 0.1 tolerance is out of reach at 60,000 codes and affordable at 10,000. The subset is then
the target measure, and the table says so.

  python benchmarks/ot_tolerance.py --config configs/mnist-fid10k.yaml --storage /work/runs/mnist-fid10k \
      --subset 10000 --tols 2,1,0.5,0.3,0.1 --n-samples 2000 --json ot-tolerance.json --png docs/img/ot-tolerance.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected among a handful of measured errors)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def study(cfg, storage: str, tols: list[float], n_samples: int, subset: int | None, progress: bool = True) -> dict:
    """Solve, generate and score at each of ``tols`` (sorted loosest first); the table as a dict."""
    from vegan.cluster import Tasks
    from vegan.evaluation import check_extractor, eval_roles
    from vegan.metrics import TrainingRows, evaluate_sets, feature_space
    from vegan.metrics.sources import Decoded, digest
    from vegan.ot.api import make_evaluator, sampling_from_config, solver_from_config
    from vegan.ot.generate import generate
    from vegan.ot.problem import make_problem
    from vegan.ot.solver import run as drive
    from vegan.stages.context import Run
    from vegan.storage import Storage

    run = Run(cfg, Storage(storage), progress=progress)
    run.require("ae")
    run.require("latents")
    codes = np.asarray(run.codes, dtype=np.float32)
    n_codes_all = len(codes)
    if subset is not None:
        if not 2 <= subset <= n_codes_all:
            raise ValueError(f"--subset must be between 2 and the run's {n_codes_all} codes, got {subset}")
        codes = codes[:subset]
    eval_cfg = cfg.eval.model_copy(update={"n_samples": n_samples})
    train = run.dataset
    check_extractor(cfg.data, eval_cfg, train.labels is not None)
    roles = eval_roles(train, cfg.data, eval_cfg)
    cache = run.storage.sub("cache")
    space = feature_space(eval_cfg, TrainingRows(train, train.labels, roles.train_exclude), cache=cache)
    shape = tuple(roles.reference.shape)
    decoder = run.model.decoder

    problem = make_problem(codes, None, sampling_from_config(cfg.ot), Tasks(None))
    evaluate = make_evaluator(problem, cfg.ot)
    rows, h = [], None
    try:
        for tol in sorted(tols, reverse=True):
            solver = solver_from_config(cfg.ot.model_copy(update={"tol": tol}))
            t0 = time.perf_counter()
            res = drive(solver, problem, evaluate, progress=progress, h0=h)
            seconds = time.perf_counter() - t0
            h = res.h
            g = cfg.generate
            gen = generate(codes, res, n=n_samples, k=g.k, angle_threshold=g.angle_threshold, seed=g.seed,
                           centroid_samples=g.centroid_samples, progress=progress)  # fmt: skip
            name = f"tol={tol:g}"
            source = Decoded(decoder, gen.codes, shape, digest("ot-tolerance", run.keys["ae"], codes.shape, tol, h))
            m = evaluate_sets(roles.reference, {name: source}, eval_cfg, cache=cache, space=space,
                              progress=progress)[name]  # fmt: skip
            row = {
                "tol": tol,
                "converged": bool(res.converged),
                "iterations": int(res.iterations),
                "ot_seconds": round(seconds, 1),
                "max_rel_error": float(res.marginal_error["max"]),
                "l1_rel_error": float(res.marginal_error["l1"]),
                "check_samples": int(res.marginal_error["n_samples"]),
                "rejection_rate": float(gen.rejection_rate),
                **{k: float(m[k]) for k in ("fid", "kid_mean", "precision", "recall") if k in m},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        evaluate.close()
    fid = [r["fid"] for r in rows]
    return {
        "dataset": cfg.data.name,
        "ae_key": run.keys["ae"],
        "n_codes": len(codes),
        "n_codes_in_run": n_codes_all,
        "n_samples": n_samples,
        "n_reference": roles.n_reference,
        "protocol": eval_cfg.protocol,
        "extractor": space.info.get("extractor"),
        "rows": rows,
        "spearman_fid_vs_max": spearman([r["max_rel_error"] for r in rows], fid),
        "spearman_fid_vs_l1": spearman([r["l1_rel_error"] for r in rows], fid),
    }


def plot(table: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "max_rel_error", "max"), (axes[1], "l1_rel_error", "L1")):
        x, y = [r[key] for r in rows], [r["fid"] for r in rows]
        ax.plot(x, y, "o-")
        for r in rows:
            ax.annotate(f"tol {r['tol']:g}", (r[key], r["fid"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"verified {label} relative cell error")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FID")
    codes = f"{table['n_codes']:,} of {table['n_codes_in_run']:,} codes"
    fig.suptitle(f"{table['dataset']}: AE-OT FID ({table['n_samples']:,} samples vs {table['n_reference']:,} "
                 f"{table['protocol']}-protocol reference, {table['extractor']}) against OT accuracy, {codes}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="starting config (as vegan run)")
    p.add_argument("--config", help="the run's YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (as vegan run)")
    p.add_argument("--storage", required=True, help="run folder whose ae and latents stages are done")
    p.add_argument("--tols", default="2,1,0.5,0.3,0.1", help="comma-separated OT tolerances (max rel. cell error)")
    p.add_argument("--n-samples", type=int, default=2000, help="generated images scored per tolerance")
    p.add_argument("--subset", type=int, default=None, help="solve for the first N codes only")
    p.add_argument("--json", type=Path, help="write the table here")
    p.add_argument("--png", type=Path, help="write the plot here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from vegan.config import load_config

    cfg = load_config(preset=args.preset, path=args.config, overrides=args.set)
    tols = [float(t) for t in args.tols.split(",")]
    table = study(cfg, args.storage, tols, args.n_samples, args.subset, progress=not args.quiet)
    print(f"Spearman(FID, max error) = {table['spearman_fid_vs_max']:.2f}; "
          f"Spearman(FID, L1 error) = {table['spearman_fid_vs_l1']:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    if args.png:
        plot(table, args.png)
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
