"""Kernel throughput against the target-column chunk width (what ``choose_chunking`` picks on CPU).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/kernel_chunks.py [--n 10000] [--d 16] \
        [--samples 65536] [--cols 1024 512 256 128] [--threads 1] [--repeat 2]

Times ``assign_counts`` in the solver's training mode (float32 screening, winner
index and near-tie runner-up within a margin) on a clustered problem, once per
column width and ``--repeat`` rounds interleaved, so that a noisy machine hits
every width alike. Prints GFLOP/s (``2 N n (d + 1)`` per call, best of 3 calls)
and each width's rate relative to the one ``choose_chunking`` picks.
"""

from __future__ import annotations

import argparse
import time

import torch

from vegan.ot.assign import Chunking, assign_counts, choose_chunking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--samples", type=int, default=65_536)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, nargs="+", default=[1024, 512, 256, 128])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(20, args.d, generator=g)
    y = centers[torch.randint(0, 20, (args.n,), generator=g)] + 0.3 * torch.randn(args.n, args.d, generator=g)
    y = y / y.abs().sum(1).max()
    h = -0.5 * (y.double() ** 2).sum(1).float()
    x = torch.rand(args.samples, args.d, generator=g) * 2 - 1
    flops = 2 * args.samples * args.n * (args.d + 1)
    picked = choose_chunking(args.n, args.d).chunk_cols
    widths = sorted(set(args.cols) | {picked}, reverse=True)

    def rate(cols: int) -> float:
        run = lambda: assign_counts(  # noqa: E731
            x, y, h, precision="float32", want_idx=True, margin=0.005, chunking=Chunking(args.rows, cols)
        )
        run()
        best = min(_timed(run) for _ in range(3))
        return flops / best / 1e9

    rates: dict[int, list[float]] = {c: [] for c in widths}
    for _ in range(args.repeat):
        for c in widths:
            rates[c].append(rate(c))
    print(f"n={args.n} d={args.d} samples={args.samples} rows={args.rows} threads={args.threads} picked cols={picked}")
    ref = max(rates[picked])
    for c in widths:
        runs = " / ".join(f"{r:.1f}" for r in rates[c])
        mark = "  <- picked" if c == picked else ""
        print(f"cols {c:5d}: {runs} GFLOP/s  best/picked {max(rates[c]) / ref:.2f}{mark}")


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
