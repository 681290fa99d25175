"""What checking every chunk against its digest costs a reader: checked vs plain reads of one store.

Writes ``n`` random float32 codes (``d`` columns, row chunks of ``chunk_rows``) with their
digests (:func:`vegan.digests.write_chunk`, as the latents stage does), then reads all rows
``repeats`` times both ways, alternating: plainly (``group["codes"][:]``) and through
:class:`vegan.digests.CheckedRows` (whole chunks, sha256 each, one digest object per chunk).
Prints the median seconds of each and their ratio (measured within this one run).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/digest_overhead.py --n 262144 --d 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import zarr

from vegan.digests import CheckedRows, add_digests, write_chunk


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=262144)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        g = zarr.open_group(f"{tmp}/codes.zarr", mode="w")
        n_chunks = -(-args.n // args.chunk_rows)
        g.create_array("codes", shape=(args.n, args.d), chunks=(args.chunk_rows, args.d), dtype="float32")
        g.create_array("complete", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False)
        add_digests(g, n_chunks, ["codes"])
        for c in range(n_chunks):
            lo = c * args.chunk_rows
            rows = rng.standard_normal((min(args.chunk_rows, args.n - lo), args.d), dtype=np.float32)
            write_chunk(g, c, lo, {"codes": rows})
        reader = CheckedRows(g, "codes", "bench")
        plain, checked = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            a = np.asarray(g["codes"][:])
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = reader.rows(0, args.n)
            checked.append(time.perf_counter() - t0)
            assert (a == b).all()
    out = {
        "n": args.n,
        "d": args.d,
        "chunk_rows": args.chunk_rows,
        "mib": args.n * args.d * 4 / 2**20,
        "plain_s": statistics.median(plain),
        "checked_s": statistics.median(checked),
    }
    out["ratio"] = out["checked_s"] / out["plain_s"]
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
