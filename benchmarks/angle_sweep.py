"""Which dihedral-angle threshold should generation use by default? A measured sweep.

The singularity-aware sampler mixes a sample's top-k cells only when the angle
between their supporting hyperplanes is under a threshold; a sample with no such
neighbour lies on a singular set and is rejected. Too small a threshold rejects
almost everything and degenerates to the plain OT map (repeats training codes);
too large mixes codes across the gaps between modes (off-mode samples).

Two problems, each with one OT solve and one set of centroids shared by every
threshold, so only the threshold changes between rows:

* ``grid2d``: the 25-Gaussian grid with the identity autoencoder (the 2-D points are
  the codes): rejection rate vs modes covered, share of high-quality samples
  (within 3 std of a mode; 1 - that is the off-mode share) and reverse KL.
* ``mnist``: a finished run folder (``vegan run --preset demo --until ot``): decoded
  samples scored by the pipeline's evaluation (``vegan.evaluation.make_evaluate_fn``,
  the run's own extractor and held-out split): rejection rate vs FID, precision, recall.

    .venv/bin/python benchmarks/angle_sweep.py --mnist-run runs/sweep-demo [--skip-grid2d] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from vegan.config import DataConfig
from vegan.data import load_dataset
from vegan.metrics.modes import grid_metrics
from vegan.ot import solve
from vegan.ot.generate import estimate_centroids, generate

# Degrees. 0.7 was the old default (meant as the published 0.7 rad = 40.1 deg); 1e9 = no rejection.
THRESHOLDS = (0.7, 3.0, 10.0, 20.0, math.degrees(0.7), 60.0, 1e9)


def _grid2d(args) -> list[dict]:
    y = load_dataset(DataConfig(name="grid2d", limit=args.grid_codes, seed=0)).data.numpy()
    t = time.perf_counter()
    ot = solve(y, tol=0.3, max_iter=300, seed=0, progress=False)
    print(f"grid2d OT: {ot.iterations} it, {time.perf_counter() - t:.1f} s, max err {ot.marginal_error['max']:.3g}")
    centroids, _ = estimate_centroids(ot.scale_codes(y), ot.h, 400_000, seed=0, source=ot.source, progress=False)
    rows = []
    for thr in THRESHOLDS:
        out = generate(y, ot, n=args.n, k=8, angle_threshold=thr, seed=args.seed, centroids=centroids, progress=False)
        m = grid_metrics(out.codes)
        rows.append(
            {
                "problem": "grid2d",
                "seed": args.seed,
                "threshold_deg": thr,
                "rejection_rate": out.rejection_rate,
                "modes_covered": m["modes_covered"],
                "high_quality": m["high_quality"],
                "off_mode": 1 - m["high_quality"],
                "reverse_kl": m["reverse_kl"],
            }
        )
    return rows


def _mnist(args) -> list[dict]:
    from vegan.evaluation import make_evaluate_fn
    from vegan.ot import load_result
    from vegan.pipeline import Run
    from vegan.storage import Storage

    store = Storage(args.mnist_run)
    from vegan.config import PipelineConfig

    cfg = PipelineConfig.model_validate(store.read_json("manifest.json")["config"])
    run = Run(cfg, store, progress=False)
    ot = load_result(run.dir("ot"))
    codes = run.codes
    decoder = run.model.decoder.eval()
    cfg_eval = cfg.eval.model_copy(update={"n_samples": args.n})
    evaluate_fn = make_evaluate_fn(cfg.data, cfg_eval, cache=store.sub("cache"))
    centroids, _ = estimate_centroids(
        ot.scale_codes(codes), ot.h, cfg.generate.centroid_samples, seed=0, source=ot.source, progress=False
    )
    rows, sets, rejection = [], {}, {}
    for thr in THRESHOLDS:
        try:
            out = generate(
                codes,
                ot,
                n=args.n,
                k=cfg.generate.k,
                angle_threshold=thr,
                seed=args.seed,
                centroids=centroids,
                progress=False,
            )
        except RuntimeError as exc:  # (almost) every sample rejected: no set to score at this threshold
            print(f"threshold {thr:g} deg: {exc}")
            rejection[f"{thr:g}"] = 1.0
            continue
        with torch.no_grad():
            sets[f"{thr:g}"] = decoder(torch.from_numpy(out.codes)).clamp(0, 1)
        rejection[f"{thr:g}"] = out.rejection_rate
    metrics = evaluate_fn(sets)
    for thr in THRESHOLDS:
        m = metrics.get(f"{thr:g}", {})
        rows.append(
            {
                "problem": "mnist",
                "seed": args.seed,
                "threshold_deg": thr,
                "rejection_rate": rejection[f"{thr:g}"],
                **{k: m[k] for k in ("fid", "precision", "recall", "coverage") if k in m},
                "extractor": cfg.eval.extractor,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="samples per threshold")
    p.add_argument("--grid-codes", type=int, default=2500)
    p.add_argument("--seed", type=int, default=1, help="generation seed (the OT solve and centroids are fixed)")
    p.add_argument("--mnist-run", help="run folder with ae, latents and ot finished (e.g. the demo preset)")
    p.add_argument("--skip-grid2d", action="store_true", help="only the MNIST run folder's sweep")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [] if args.skip_grid2d else _grid2d(args)
    if args.mnist_run:
        rows += _mnist(args)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
