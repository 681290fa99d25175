"""Scale-out benchmark: ingest, streamed training batches, ae (short), latents, code statistics, OT, generate.

For each N it writes a synthetic uint8 Zarr dataset (MNIST digits with random
shifts and flips, chunks generated and written by Dask workers), then measures,
on a LocalCluster of 2 workers with a memory limit and again on 1 worker:

* ingest   synthetic chunks generated + compressed + written by the workers (images/s)
* png      a fixed folder of PNG files ingested by the workers (decode cost, images/s; first N only)
* stream   StreamBatches on the driver: batches of 256 with prefetch (images/s, chunk reads)
* ae       a short conv-AE training run fed by StreamBatches on the driver (s/step)
* latents  extract_latents as a Dask map over chunks with an EncoderRef (images/s)
* stats    code_stats (centre/scale for OT) streamed over code chunks on the workers (codes/s)
* ot       a few OT iterations (``solve`` on the Zarr codes, ``mode=auto``): the workers compute the
           scaling and count cells from the store; the driver holds h and the solver state (codes/s,
           s per iteration, n x samples per s)
* generate ``generate_to_zarr`` from the Zarr codes: top-k and mixing on the workers, output written
           by chunk on the workers (generated codes/s)

and the peak RSS of the driver (which also hosts the LocalCluster scheduler) and
of every worker. Each N runs in its own process, so the driver's peak RSS is
that N's alone; its figure at large N should stay close to its figure at small N.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scale.py --n 100000 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux copies that into forked children."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _workers_peak(client) -> dict[str, float]:
    return {addr.rsplit(":", 1)[-1]: round(v, 1) for addr, v in client.run(peak_rss_mib).items()}


def _bytes(size: str) -> int:
    from dask.utils import parse_bytes

    return parse_bytes(size)


def _png_folder(folder: Path, n: int) -> None:
    from PIL import Image

    from vegan.data.synthetic import shifted_mnist_rows

    if folder.exists() and len(list(folder.rglob("*.png"))) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    x, y = shifted_mnist_rows(123, 0, 0, n)
    for i in range(n):
        sub = folder / str(int(y[i]))
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i, 0]).save(sub / f"{i:06d}.png")


def run_one(n: int, args) -> dict:
    """All measurements for one N (called in a fresh process)."""
    import torch
    from distributed import Client

    from vegan.cluster import local_cluster
    from vegan.config import AEConfig
    from vegan.data import StreamBatches, ZarrDataset, ingest
    from vegan.data.synthetic import _mnist_uint8, write_shifted_mnist
    from vegan.latents import EncoderRef, code_stats, extract_latents
    from vegan.models import build_model
    from vegan.ot import solve
    from vegan.ot.generate import generate_to_zarr
    from vegan.ot.targets import ZarrTargets

    torch.set_num_threads(1)
    work = Path(args.work) / f"n{n}"
    if not args.resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"n": n, "chunk_rows": args.chunk_rows, "worker_memory_limit": args.memory_limit, "stages": {}}
    rss0 = peak_rss_mib()
    data_url = str(work / "data.zarr")
    model_path = str(work / "model.pt")

    def stage(name, seconds, items, **extra):
        out["stages"][name] = {
            "seconds": round(seconds, 3),
            "items_per_s": round(items / seconds, 1),
            "driver_peak_rss_mib": round(peak_rss_mib(), 1),
            **extra,
        }
        print(
            f"[n={n}] {name}: {seconds:.2f} s, {items / seconds:,.0f}/s, driver peak {peak_rss_mib():.0f} MiB "
            + " ".join(f"{k}={v}" for k, v in extra.items()),
            file=sys.stderr,
            flush=True,
        )

    for workers in (2, 1) if n <= args.one_worker_max else (2,):
        tag = f"{workers}w"
        with (
            local_cluster(workers, memory_limit=args.memory_limit) as cluster,
            Client(cluster) as client,
        ):
            client.run(torch.set_num_threads, 1)
            client.run(_mnist_uint8, None)  # every worker loads the 47 MB digit base once, before timing
            dest = data_url if workers == 2 else str(work / "data-1w.zarr")
            t = time.perf_counter()
            write_shifted_mnist(dest, n, chunk_rows=args.chunk_rows, client=client)
            stage(f"ingest_synthetic_{tag}", time.perf_counter() - t, n)
            if workers == 1:
                shutil.rmtree(dest, ignore_errors=True)

            if args.png and not args.skip_png:
                folder = Path(args.work) / f"png{args.png}"
                client.submit(_png_folder, folder, args.png, pure=False).result()  # setup, on a worker
                t = time.perf_counter()
                ingest(str(folder), str(work / f"png-{tag}.zarr"), chunk_rows=1024, client=client, progress=False)
                stage(f"ingest_png_{tag}", time.perf_counter() - t, args.png)

            ds = ZarrDataset(data_url)
            if workers == 2:
                # Streamed batches on the driver (what a GPU training loop would consume).
                reads0 = ds.reads
                with StreamBatches(ds, 256, seed=0, prefetch=2) as stream:
                    stream.batch(0)
                    t = time.perf_counter()
                    for s in range(1, args.stream_steps + 1):
                        stream.batch(s)
                    stage(
                        "stream",
                        time.perf_counter() - t,
                        256 * args.stream_steps,
                        chunk_reads=ds.reads - reads0,
                        max_cached_chunks=stream.max_cached,
                    )
                # A short AE run fed by the stream, then the encoder the workers load.
                cfg = AEConfig(arch="conv", width=args.width, latent_dim=args.latent_dim, batch_size=128)
                model = build_model(cfg, ds.shape)
                opts = model.make_optimizers(cfg)
                gen = torch.Generator().manual_seed(0)
                with StreamBatches(ds, cfg.batch_size, seed=0, prefetch=2) as stream:
                    t = time.perf_counter()
                    for s in range(args.ae_steps):
                        model.train_step(stream.batch(s), opts, gen)
                    stage("ae_short", time.perf_counter() - t, args.ae_steps * cfg.batch_size, steps=args.ae_steps)
                torch.save(
                    {"state_dict": model.state_dict(), "shape": list(ds.shape), "config": cfg.model_dump()}, model_path
                )

            codes = str(work / f"codes-{tag}.zarr")
            t = time.perf_counter()
            extract_latents(
                EncoderRef(model_path, device="cpu"),
                ds,
                codes,
                chunk_rows=args.chunk_rows,
                batch_size=512,
                progress=False,
                client=client,
            )
            stage(f"latents_{tag}", time.perf_counter() - t, n)
            t = time.perf_counter()
            st = code_stats(codes, "cube", client=client)
            stage(f"code_stats_{tag}", time.perf_counter() - t, n, scale=round(st.scale, 4))
            if workers == 2:
                ref = ZarrTargets.open(codes + "/codes")
                t = time.perf_counter()
                res = solve(
                    ref,
                    client=client,
                    max_iter=args.ot_iters,
                    n_samples=args.ot_samples,
                    max_samples=args.ot_samples,
                    eval_samples=args.ot_samples,
                    checkpoint_every=1,
                    progress=False,
                )
                sec = time.perf_counter() - t
                iters = [r["seconds"] for r in res.history]
                stage(
                    "ot",
                    sec,
                    n,
                    iterations=res.iterations,
                    s_per_iteration=round(sum(iters) / len(iters), 3),
                    n_x_samples_per_s=round(n * args.ot_samples * len(iters) / sum(iters), 1),
                    mode=res.execution["mode"],  # what mode=auto chose (recorded by solve)
                    shards=res.execution["shards"],
                )
                t = time.perf_counter()
                info = generate_to_zarr(
                    ref,
                    res,
                    str(work / "samples.zarr"),
                    n=args.gen_n,
                    centroid_samples=args.gen_centroids,
                    angle_threshold=args.gen_angle,
                    client=client,
                    progress=False,
                )
                stage("generate", time.perf_counter() - t, args.gen_n, rejection_rate=round(info["rejection_rate"], 4))
            peaks = _workers_peak(client)
            out[f"worker_peak_rss_mib_{tag}"] = peaks
            out[f"worker_over_memory_limit_{tag}"] = any(v * 2**20 > _bytes(args.memory_limit) for v in peaks.values())
            if workers == 1:
                shutil.rmtree(codes, ignore_errors=True)
    out["driver_rss_after_imports_mib"] = round(rss0, 1)
    out["driver_peak_rss_mib"] = round(peak_rss_mib(), 1)
    out["dataset_bytes_uint8"] = n * 784
    out["dataset_bytes_float32"] = n * 784 * 4
    out["zarr_bytes_on_disk"] = sum(p.stat().st_size for p in Path(data_url).rglob("*") if p.is_file())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=float, nargs="+", default=[1e5], help="dataset sizes (images)")
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--memory-limit", default="2GiB", help="per-worker Dask memory limit")
    p.add_argument("--stream-steps", type=int, default=400)
    p.add_argument("--ae-steps", type=int, default=30)
    p.add_argument("--width", type=int, default=16, help="conv AE width")
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--png", type=int, default=4000, help="PNG files for the folder-ingest figure (0: skip)")
    p.add_argument(
        "--one-worker-max",
        type=float,
        default=1e6,
        help="skip the 1-worker figures above this N (they only repeat the 2-worker work, slower)",
    )
    p.add_argument("--work", default=str(ROOT / ".cache" / "scale"))
    p.add_argument("--keep", action="store_true", help="keep the Zarr stores")
    p.add_argument("--ot-iters", type=int, default=2, help="OT iterations (then one fresh check)")
    p.add_argument("--ot-samples", type=int, default=8192, help="source samples per OT iteration and check")
    p.add_argument("--gen-n", type=int, default=4096, help="codes to generate")
    p.add_argument(
        "--gen-angle",
        type=float,
        default=180.0,
        help="angle threshold (degrees); after a few OT iterations in d = 64 nearly every sample would be "
        "rejected at the default 20, so throughput is measured with the rejection off",
    )
    p.add_argument("--gen-centroids", type=int, default=8192, help="Monte Carlo samples for the centroids")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the stores a previous (interrupted) run left under --work: ingest and latents then skip "
        "their finished chunks, so their figures measure the skip; ot and generate run in full",
    )
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one N
    p.add_argument("--skip-png", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.n[0]), args)))
        return
    results = []
    for i, n in enumerate(args.n):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            "--n",
            str(int(n)),
            "--chunk-rows",
            str(args.chunk_rows),
            "--memory-limit",
            args.memory_limit,
            "--stream-steps",
            str(args.stream_steps),
            "--ae-steps",
            str(args.ae_steps),
            "--width",
            str(args.width),
            "--latent-dim",
            str(args.latent_dim),
            "--png",
            str(args.png),
            "--work",
            args.work,
            "--one-worker-max",
            str(args.one_worker_max),
            "--ot-iters",
            str(args.ot_iters),
            "--ot-samples",
            str(args.ot_samples),
            "--gen-n",
            str(args.gen_n),
            "--gen-centroids",
            str(args.gen_centroids),
            "--gen-angle",
            str(args.gen_angle),
        ]
        cmd += (["--keep"] if args.keep else []) + (["--skip-png"] if i > 0 else [])
        cmd += ["--resume"] if args.resume else []
        res = subprocess.run(
            cmd, check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    doc = {"benchmark": "scale", "results": results}
    if len(results) > 1:
        doc["driver_peak_rss_ratio_last_vs_first"] = round(
            results[-1]["driver_peak_rss_mib"] / results[0]["driver_peak_rss_mib"], 3
        )
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for r in results:
            print(f"n={r['n']}: driver peak {r['driver_peak_rss_mib']} MiB; workers (2w) {r['worker_peak_rss_mib_2w']}")
            for name, s in r["stages"].items():
                print(f"  {name:22s} {s['seconds']:9.2f} s {s['items_per_s']:12,.0f}/s")


if __name__ == "__main__":
    main()
