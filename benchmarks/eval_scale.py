"""The eval stage on a large uint8 Zarr dataset, on a LocalCluster: driver and worker peak RSS, seconds.

For each N a fresh process writes the synthetic dataset of ``benchmarks/scale.py``
(MNIST digits with random shifts and flips, uint8, written by the workers) and
runs the pipeline up to ``gan`` (short AE, two OT iterations of 65,536 samples,
GAN off; finished stages of an earlier run in ``--work`` are reused); a
second fresh process then runs only the eval stage on a LocalCluster of 2
workers with a memory limit, with ``ZarrDataset.data`` refused in the driver at
any size (so the run proves the driver never materialises the dataset). It
prints the eval stage's seconds, the driver's peak RSS (VmHWM; it also hosts the
scheduler) before and after the stage, and each worker's peak RSS.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/eval_scale.py --n 20000 200000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import peak_rss_mib


def _config(args, n: int, url: str):
    from vegan.config import load_config

    held = 2 * args.eval_n
    return load_config(
        "tiny",
        overrides=[
            f"data.name={url}", f"data.limit={n - held}", "ae.steps=50", "ae.batch_size=128",
            f"ae.latent_dim={args.latent_dim}", f"latents.chunk_rows={args.chunk_rows}", "ot.max_iter=2",
            "ot.n_samples=65536", "ot.max_samples=65536", "ot.eval_samples=65536",
            f"generate.n_samples={args.eval_n}", "generate.centroid_samples=65536", "gan.enabled=false",
            f"eval.n_samples={args.eval_n}", "eval.kid_subset_size=1000", "cluster.address=local",
            "cluster.n_workers=2", f"cluster.memory_limit={args.memory_limit}",
        ],
    )  # fmt: skip


def prepare(n: int, args) -> dict:
    from distributed import Client, LocalCluster

    from vegan.data.synthetic import write_shifted_mnist
    from vegan.pipeline import run_pipeline
    from vegan.storage import Storage

    work = Path(args.work) / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    url = str(work / "data.zarr")
    t = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, Client(lc) as client:
        write_shifted_mnist(url, n, chunk_rows=args.chunk_rows, client=client)  # resumable: a finished store stays
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    run_pipeline(_config(args, n, url), Storage(str(work / "run")), until="gan", progress=False)
    return {"ingest_s": round(ingest_s, 1), "upstream_s": round(time.perf_counter() - t, 1)}


def measure(n: int, args) -> dict:
    from vegan.cluster import connect
    from vegan.data import zarrset
    from vegan.evaluation import evaluate_run
    from vegan.stages.context import Run

    zarrset.MAX_IN_MEMORY_BYTES = 0  # the driver refuses ZarrDataset.data at any size
    work = Path(args.work) / f"n{n}"
    cfg = _config(args, n, str(work / "data.zarr"))
    rss_imports = peak_rss_mib()
    with connect(cfg.cluster) as client:
        run = Run(cfg, str(work / "run"), progress=False, client=client)
        rss_before = peak_rss_mib()
        t = time.perf_counter()
        info = evaluate_run(run)
        seconds = time.perf_counter() - t
        workers = {a.rsplit(":", 1)[-1]: round(v, 1) for a, v in client.run(peak_rss_mib).items()}
    return {
        "eval_s": round(seconds, 1),
        "driver_peak_rss_after_imports_mib": round(rss_imports, 1),
        "driver_peak_rss_before_eval_mib": round(rss_before, 1),
        "driver_peak_rss_mib": round(peak_rss_mib(), 1),
        "worker_peak_rss_mib": workers,
        "n_reference": info["n_reference"],
        "extractor": info["extractor"],
        "fid": {k: round(v["fid"], 3) for k, v in info["metrics"].items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=float, nargs="+", default=[2e5])
    p.add_argument("--eval-n", type=int, default=2000, help="eval.n_samples (held-out rows: twice this)")
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--memory-limit", default="2GiB")
    p.add_argument("--work", default="/tmp/vegan-eval-scale")
    p.add_argument("--json", action="store_true")
    p.add_argument("--phase", choices=["prepare", "measure"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:  # a child process: one phase for one N
        fn = prepare if args.phase == "prepare" else measure
        print(json.dumps(fn(int(args.n[0]), args)))
        return
    results = []
    for n in (int(x) for x in args.n):
        row = {"n": n, "dataset_bytes_float32": n * 784 * 4, "load_average": os.getloadavg()}
        for phase in ("prepare", "measure"):
            cmd = [sys.executable, __file__, "--phase", phase, "--n", str(n), "--eval-n", str(args.eval_n),
                   "--chunk-rows", str(args.chunk_rows), "--latent-dim", str(args.latent_dim),
                   "--memory-limit", args.memory_limit, "--work", args.work]  # fmt: skip
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"[n={n}] {phase}: {done.stdout.strip().splitlines()[-1]}", file=sys.stderr, flush=True)
        row["load_average_after"] = os.getloadavg()
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
