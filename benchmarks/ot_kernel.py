"""Throughput of the cell-assignment kernel vs this machine's sgemm peak, a naive kernel, and Dask.

    .venv/bin/python benchmarks/ot_kernel.py [--json] [--quick]

For d=64 and n=1e5 / 1e6 targets it reports:
  peak_gflops       {"float32": ..., "screened": ...}: torch.mm on large square float32 matrices
                    (best of repeats), in IEEE fp32 and on bf16 units (oneDNN fp32_precision="bf16",
                    what the screened kernel runs on); the same measurement for both
  precision         what precision="auto" resolved to here, and precision_reason why
  kernel_gflops     vegan.ot.assign_counts at that precision (2 * N * n * d useful flops per second)
  frac_of_same_precision_peak   kernel_gflops / peak_gflops[precision]
  float32_gflops, float32_frac_of_same_precision_peak   the kernel forced to float32, vs the fp32 peak
  naive_gflops      full score matrix per sample batch, then max(1) (published AE-OT style), run
                    with the same GEMM precision as the kernel
  speedup_vs_naive  kernel / naive, same precision
  gemm_only_gflops  the kernel's GEMMs alone: same sample blocks, same target chunks, K = d + 1, no
                    max, no rescoring (the ceiling of any kernel that scores every pair this way)
  gemm_only_frac_of_same_precision_peak, kernel_frac_of_gemm_only   where the gap to the peak goes:
                    the thin K = d + 1 GEMM shape vs the reduction and rescoring on top of it
  dask_efficiency   Dask overhead on the same cores: 2 workers x 1 thread vs one process x 2 threads
  dask_scaling      throughput with 2 workers vs 1 worker (1 thread each): a real scaling figure
  dask_iteration_s  one solver iteration's counting through Dask (n=1e6 includes the figure asked for)
  worker_rss_mb     peak resident memory of each Dask worker
  peak_rss_mb       peak resident memory of this (driver) process
Timings are noisy on a shared machine: compare the ratios, all measured in one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from vegan.ot.assign import _gemm_mode, assign_counts, choose_chunking, cpu_has_fast_bf16, resolve_precision
from vegan.ot.counting import count_slices
from vegan.ot.problem import OTProblem, Sampling, sample_slice

D = 64
NAIVE_BUDGET = 2**27  # floats in the naive score matrix (512 MB), which sets its batch size


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_gflops(size: int, repeats: int, precision: str) -> float:
    """Square float32 GEMM rate in IEEE fp32 or on the bf16 units the screened kernel uses."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)

    def mm():
        with _gemm_mode(precision):
            torch.mm(a, b, out=c)

    return 2 * size**3 / best_time(mm, repeats) / 1e9


def precision_reason(d: int) -> str:
    pick = resolve_precision("auto", "cpu", d)
    if d < 48:
        return f"auto -> {pick}: d = {d} < 48, where the wider bf16 margin costs more than the GEMM saves"
    if cpu_has_fast_bf16():
        return "auto -> screened: the CPU has AMX bf16 tiles (amx_bf16 in /proc/cpuinfo)"
    return (
        "auto -> float32: no AMX (amx_bf16 absent from /proc/cpuinfo); AVX-512 bf16 alone runs bf16 "
        "GEMMs at about the fp32 rate (see peak_gflops), so screening would not pay"
    )


def naive(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """What published AE-OT code does: a full (batch, n) score matrix, then max with indices."""
    bs = max(1, NAIVE_BUDGET // y.shape[0])
    out = []
    with _gemm_mode(precision):
        for a in range(0, x.shape[0], bs):
            scores = torch.mm(x[a : a + bs], y.T) + h
            out.append(scores.max(dim=1).indices)
    return torch.cat(out)


def gemm_only(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, precision: str) -> None:
    """The kernel's score GEMMs and nothing else: ``[x, 1] @ [y, h].T`` by its blocks and chunks."""
    chunking = choose_chunking(y.shape[0], y.shape[1])
    xs = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    ys = torch.cat([y, h[:, None]], dim=1)
    rows, cols = chunking.block_rows, chunking.chunk_cols
    buf = torch.empty(rows, cols)
    with _gemm_mode(precision):
        for a in range(0, xs.shape[0], rows):
            xb = xs[a : a + rows]
            for s in range(0, ys.shape[0], cols):
                yt = ys[s : s + cols]
                torch.mm(xb, yt.T, out=buf[: xb.shape[0], : yt.shape[0]])


def problem(n: int, n_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(n, D, generator=g) / 8
    h = torch.randn(n, generator=g) * 0.01
    return sample_slice(D, n_samples, Sampling(), tag=0, iteration=0, index=0), y, h


def bench_n(n: int, n_samples: int, repeats: int) -> dict:
    x, y, h = problem(n, n_samples)
    flops = 2 * n_samples * n * D
    pick = resolve_precision("auto", "cpu", D)
    t_kernel = best_time(lambda: assign_counts(x, y, h, want_idx=False), repeats)
    t_fp32 = best_time(lambda: assign_counts(x, y, h, want_idx=False, precision="float32"), repeats)
    t_naive = best_time(lambda: naive(x, y, h, pick), max(1, repeats - 1))
    t_gemm = best_time(lambda: gemm_only(x, y, h, pick), repeats)
    y64, h64 = y.double(), h.double()
    exact = torch.cat([(x[a : a + 32].double() @ y64.T + h64).argmax(1) for a in range(0, 512, 32)])
    del y64, h64
    assert torch.equal(exact, assign_counts(x[:512], y, h).idx)
    assert torch.equal(exact, assign_counts(x[:512], y, h, precision="float32").idx)
    out = {
        "n": n,
        "d": D,
        "samples": n_samples,
        "precision": pick,
        "precision_reason": precision_reason(D),
        "kernel_gflops": flops / t_kernel / 1e9,
        "float32_gflops": flops / t_fp32 / 1e9,
        "naive_gflops": flops / t_naive / 1e9,
        "speedup_vs_naive": t_naive / t_kernel,
        "gemm_only_gflops": flops / t_gemm / 1e9,
        "kernel_frac_of_gemm_only": t_gemm / t_kernel,
    }
    return out


def bench_dask(y: torch.Tensor, h: np.ndarray, n_samples: int, repeats: int, client, client1) -> dict:
    """Same slices counted in this process (2 threads), on 2 single-thread workers, and on 1."""
    from vegan.ot.distributed import DaskEvaluator

    n = y.shape[0]
    slice_size = 4096
    k = n_samples // slice_size
    problem = OTProblem(y.numpy(), np.full(n, 1 / n), np.zeros(D), 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    t_local = best_time(
        lambda: count_slices(y, h, problem.sampling, tag=0, iteration=0, slices=range(k), slice_size=slice_size),
        repeats,
    )
    torch.set_num_threads(threads)
    t = time.perf_counter()
    ev = DaskEvaluator(problem, client)
    client.run(lambda: None)
    t_publish = time.perf_counter() - t
    t_first = time.perf_counter()
    ev(h, 0, 0, k, slice_size)  # includes each worker's first touch of the targets
    t_first = time.perf_counter() - t_first
    t_dask = best_time(lambda: ev(h, 0, 0, k, slice_size), repeats)
    worker_rss = client.run(lambda: __import__("psutil").Process().memory_info().rss / 2**20)
    ev.close()
    ev1 = DaskEvaluator(problem, client1)
    t_one = best_time(lambda: ev1(h, 0, 0, k, slice_size), repeats)
    ev1.close()
    return {
        "local_2threads_s": t_local,
        "dask_iteration_s": t_dask,
        "dask_1worker_iteration_s": t_one,
        "dask_first_iteration_s": t_first,
        "dask_scatter_s": t_publish,
        "dask_efficiency": t_local / t_dask,
        "dask_scaling": t_one / t_dask,
        "worker_rss_mb": sorted(round(v) for v in worker_rss.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="fewer samples and repeats (smoke run)")
    ap.add_argument("--no-dask", action="store_true", help="skip the Dask measurements")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    sizes = [(100_000, 8192 if args.quick else 16384), (1_000_000, 4096 if args.quick else 8192)]
    size = 2048 if args.quick else 4096
    result = {
        "peak_gflops": {p: peak_gflops(size, repeats + 1, p) for p in ("float32", "screened")},
        "threads": torch.get_num_threads(),
    }
    runs = []
    for n, samples in sizes:  # single-process figures first, with no Dask processes alive
        r = bench_n(n, samples, repeats)
        r["frac_of_same_precision_peak"] = r["kernel_gflops"] / result["peak_gflops"][r["precision"]]
        r["float32_frac_of_same_precision_peak"] = r["float32_gflops"] / result["peak_gflops"]["float32"]
        r["gemm_only_frac_of_same_precision_peak"] = r["gemm_only_gflops"] / result["peak_gflops"][r["precision"]]
        runs.append(r)
    if not args.no_dask:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        cluster1 = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
        client, client1 = Client(cluster), Client(cluster1)
        try:
            for r, (n, samples) in zip(runs, sizes):
                _, y, h = problem(n, samples)
                r.update(bench_dask(y, h.double().numpy(), samples, max(1, repeats - 1), client, client1))
        finally:
            for obj in (client, client1, cluster, cluster1):
                obj.close()
    result["runs"] = runs
    result["peak_rss_mb"] = rss_mb()
    if args.json:
        print(json.dumps(result))
        return
    pk = result["peak_gflops"]
    print(
        f"GEMM peak (torch.mm, square): fp32 {pk['float32']:.1f}, on bf16 units {pk['screened']:.1f} GFLOP/s "
        f"on {result['threads']} threads"
    )
    for r in runs:
        print(
            f"n={r['n']:>9,} d={r['d']} N={r['samples']}: kernel ({r['precision']}) {r['kernel_gflops']:.1f} "
            f"GFLOP/s ({r['frac_of_same_precision_peak']:.2f} of the same-precision peak), float32 "
            f"{r['float32_gflops']:.1f} ({r['float32_frac_of_same_precision_peak']:.2f}), naive "
            f"{r['naive_gflops']:.1f} -> {r['speedup_vs_naive']:.2f}x; {r['precision_reason']}"
        )
        print(
            f"   its GEMMs alone (K = d + 1, same blocks): {r['gemm_only_gflops']:.1f} GFLOP/s = "
            f"{r['gemm_only_frac_of_same_precision_peak']:.2f} of the peak; the kernel runs at "
            f"{r['kernel_frac_of_gemm_only']:.2f} of its own GEMMs"
        )
        if "dask_efficiency" in r:
            print(
                f"   dask: iteration {r['dask_iteration_s']:.2f}s vs local {r['local_2threads_s']:.2f}s "
                f"-> efficiency {r['dask_efficiency']:.2f}; 1 worker {r['dask_1worker_iteration_s']:.2f}s -> "
                f"scaling {r['dask_scaling']:.2f}; first iteration {r['dask_first_iteration_s']:.2f}s, "
                f"scatter {r['dask_scatter_s']:.2f}s; worker RSS {r['worker_rss_mb']} MB"
            )
    print(f"driver peak RSS: {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
