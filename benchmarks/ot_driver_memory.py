"""Where the driver's memory goes in OT and generate on Zarr codes: RSS and tracemalloc per phase.

Writes ``n`` random float32 codes (d = 64 by default) to a Zarr store once, then on a
LocalCluster of 2 workers (memory limit as ``benchmarks/scale.py``) runs what its ot and
generate stages run (``solve`` on :class:`ZarrTargets` with ``mode=auto``, checkpoints on,
then ``generate_to_zarr``) with the driver-side functions wrapped in named phases:

* ``problem``   make_problem: code statistics (scaling, squared norms) gathered from the workers
* ``init``      the solver's first state
* ``evaluate``  one iteration's counts from the workers (incl. the driver's merge of shard results)
* ``pool_pairs`` / ``newton`` the Hessian estimate and the CG solve of a Newton step
* ``step``      the rest of ``NewtonSolver.step``
* ``check``     a fresh-sample check; ``save`` a checkpoint
* ``gen_*``     generate: prepare (h kept as tasks), centroid table, draws, chunk writes

For each phase it prints the peak of traced Python/numpy allocations above what was live
when the phase began (tracemalloc: exact, whatever the allocator returns to the OS), what
the phase left allocated, and the highest RSS sampled (every 5 ms) while it ran. Units are
MiB and "n-vectors" (8 bytes x n). The sample count is small (``--samples``): the driver's
memory does not depend on it (near-tie pairs are 15 % of the samples), the workers' time does.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ot_driver_memory.py --n 4000000 --json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import peak_rss_mib  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / MIB


class Phases:
    """Nested named phases; per phase name: max tracemalloc peak above entry, retained, max sampled RSS."""

    def __init__(self) -> None:
        self.stack: list[list] = []  # [name, traced at entry, running child peak]
        self.stats: dict[str, dict] = {}
        self.current = "setup"
        self.lock = threading.Lock()
        self._stop = False
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        while not self._stop:
            r = rss_mib()
            with self.lock:
                st = self.stats.setdefault(self.current, {"calls": 0, "peak_mib": 0.0, "kept_mib": 0.0, "rss_mib": 0})
                st["rss_mib"] = max(st["rss_mib"], r)
            time.sleep(0.005)

    @contextlib.contextmanager
    def phase(self, name: str):
        cur, peak = tracemalloc.get_traced_memory()
        if self.stack:
            self.stack[-1][2] = max(self.stack[-1][2], peak)
        tracemalloc.reset_peak()
        self.stack.append([name, cur, 0])
        outer = self.current
        with self.lock:
            self.current = name
        try:
            yield
        finally:
            end, peak = tracemalloc.get_traced_memory()
            _, start, child = self.stack.pop()
            peak = max(peak, child)
            with self.lock:
                st = self.stats.setdefault(name, {"calls": 0, "peak_mib": 0.0, "kept_mib": 0.0, "rss_mib": 0})
                st["calls"] += 1
                st["peak_mib"] = max(st["peak_mib"], (peak - start) / MIB)
                st["kept_mib"] = max(st["kept_mib"], (end - start) / MIB)
                self.current = outer
            if self.stack:
                self.stack[-1][2] = max(self.stack[-1][2], peak)
            tracemalloc.reset_peak()

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapped(*a, **kw):
            with self.phase(name):
                return fn(*a, **kw)

        setattr(owner, attr, wrapped)

    def close(self) -> None:
        self._stop = True
        self.sampler.join()


def write_codes(url: str, n: int, d: int) -> None:
    import numpy as np
    import zarr

    if Path(url).exists():
        arr = zarr.open_array(url, mode="r")
        if arr.shape == (n, d):
            return
    arr = zarr.create_array(url, shape=(n, d), chunks=(4096 * 16, d), dtype="float32", overwrite=True)
    rng = np.random.default_rng(0)
    for lo in range(0, n, 4096 * 16):
        hi = min(n, lo + 4096 * 16)
        arr[lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=float, default=4e6)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--samples", type=int, default=1024, help="source samples per OT iteration and check")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--gen-n", type=int, default=1024)
    p.add_argument("--memory-limit", default="2GiB")
    p.add_argument("--work", default=str(ROOT / ".cache" / "ot_driver_memory"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    n = int(args.n)

    import shutil

    import torch
    from distributed import Client

    import vegan.ot.api as api
    import vegan.ot.generate as gen
    import vegan.ot.solver as solver
    from vegan.checkpoint import CheckpointDir
    from vegan.cluster import local_cluster
    from vegan.ot.distributed import DaskEvaluator
    from vegan.ot.targets import ZarrTargets
    from vegan.storage import Storage

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    codes = str(work / f"codes-{n}x{args.d}.zarr")
    write_codes(codes, n, args.d)
    shutil.rmtree(work / "ckpt", ignore_errors=True)
    shutil.rmtree(work / "samples.zarr", ignore_errors=True)

    ph = Phases()
    ph.wrap(api, "make_problem", "problem")
    ph.wrap(solver.NewtonSolver, "init", "init")
    ph.wrap(solver.NewtonSolver, "step", "step")
    ph.wrap(solver.NewtonSolver, "finish", "finish")
    ph.wrap(DaskEvaluator, "__call__", "evaluate")
    ph.wrap(solver, "pool_pairs", "pool_pairs")
    ph.wrap(solver, "newton_direction", "newton")
    ph.wrap(solver, "check", "check")
    ph.wrap(CheckpointDir, "save", "save")
    ph.wrap(gen, "_prepare", "gen_prepare")
    ph.wrap(gen, "_centroid_table_future", "gen_centroids")
    ph.wrap(gen, "_draw", "gen_draw")
    ph.wrap(gen, "generate_to_zarr", "generate")

    with (
        local_cluster(2, memory_limit=args.memory_limit) as cluster,
        Client(cluster) as client,
    ):
        client.run(torch.set_num_threads, 1)
        tracemalloc.start()
        base_rss, base_hwm = rss_mib(), peak_rss_mib()
        ref = ZarrTargets.open(codes)
        with ph.phase("ot"):
            res = api.solve(
                ref,
                client=client,
                max_iter=args.iters,
                n_samples=args.samples,
                max_samples=args.samples,
                eval_samples=args.samples,
                checkpoints=CheckpointDir(Storage(str(work / "ckpt"))),
                checkpoint_every=1,
                progress=False,
            )
        ot_hwm = peak_rss_mib()
        gen.generate_to_zarr(
            ref,
            res,
            str(work / "samples.zarr"),
            n=args.gen_n,
            centroid_samples=args.samples,
            angle_threshold=180.0,
            client=client,
            progress=False,
        )
        tracemalloc.stop()
    ph.close()
    vec = 8 * n / MIB
    out = {
        "n": n,
        "d": args.d,
        "n_vector_mib": round(vec, 2),
        "rss_before_ot_mib": round(base_rss, 1),
        "hwm_before_ot_mib": round(base_hwm, 1),
        "hwm_after_ot_mib": round(ot_hwm, 1),
        "hwm_end_mib": round(peak_rss_mib(), 1),
        "phases": {
            k: {**{m: round(v, 1) for m, v in st.items()}, "peak_n_vectors": round(st["peak_mib"] / vec, 2)}
            for k, st in ph.stats.items()
        },
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"n = {n}: one n-vector = {vec:.1f} MiB; RSS before OT {base_rss:.0f} MiB")
        print(f"VmHWM: before OT {base_hwm:.0f}, after OT {ot_hwm:.0f}, end {peak_rss_mib():.0f} MiB")
        print(f"{'phase':14s} {'calls':>5s} {'traced peak':>12s} {'n-vec':>6s} {'kept':>8s} {'max RSS':>8s}")
        for k, st in out["phases"].items():
            print(
                f"{k:14s} {st['calls']:5d} {st['peak_mib']:12.1f} {st['peak_n_vectors']:6.2f} "
                f"{st['kept_mib']:8.1f} {st['rss_mib']:8.0f}"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
