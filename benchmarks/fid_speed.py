"""TF-Inception feature extraction: speed of each speed-up and its effect on FID, in one run.

Every path extracts features of the same two sets (MNIST training images vs MNIST
test images) and scores FID between them; a speed-up is acceptable when its FID
differs from the exact baseline's by at most 0.5 %. To keep the ratios honest on a
shared machine, the paths run interleaved: each chunk of 64 images goes through
every path before the next chunk, so a change of load hits all paths alike.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fid_speed.py --json   # 8 paths x 256 images: ~14 min on 2 busy cores
    PYTHONPATH=$PWD .venv/bin/python benchmarks/fid_speed.py --n 384 --threads 1 --paths fast-bf16 --json

Paths: ``baseline`` (the code before: torch-fidelity's gather resize, NCHW, float32,
batch 64), each speed-up alone at batch 64, then the combinations at batch 16
(``fast-float32``: ``eval.precision: float32`` at batch 16; ``fast-bf16-b64``: what
``auto`` runs on a CPU with native bf16 at the default batch 64) and ``fast-bf16`` on
one thread.
Preprocessing (uint8 -> float, resize 28 -> 299) is timed on its own too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from vegan.config import DataConfig
from vegan.data import load_dataset
from vegan.metrics.fidelity import FeatureSpace, extract_features, to_extractor_input
from vegan.metrics.inception import InceptionTFOffline, cpu_has_fast_bf16, resize_tf1

CHUNK = 64
TOLERANCE = 0.005  # relative FID change allowed for a speed-up
PROTOCOL_IMAGES = 10_000 * 7  # 10k test-set reference + 6 sets of 10k (floor, recon, AE-OT, AE-OT-GAN, Gaussian, GMM)


@dataclass
class Path:
    name: str
    what: str
    batch: int
    precision: str = "float32"
    resize: str = "tf1"
    channels_last: bool = False
    threads: int | None = None  # None: torch's default

    def space(self) -> FeatureSpace:
        ex = InceptionTFOffline("inception-tf-offline", ["2048"], precision=self.precision, resize=self.resize,
                                channels_last=self.channels_last)  # fmt: skip
        return FeatureSpace(ex, f"bench-{self.name}", "2048", None, {})


PATHS = [
    Path("baseline", "before: gather resize, NCHW, float32, batch 64", 64),
    Path("matmul-resize", "resize as two matrix products", 64, resize="matmul"),
    Path("channels-last", "NHWC activations", 64, channels_last=True),
    Path("bf16", "bf16 autocast", 64, precision="bf16"),
    Path("fast-float32", "matmul resize + channels-last, batch 16 (eval.precision=float32)", 16,
         resize="matmul", channels_last=True),
    Path("fast-bf16-b64", "matmul resize + channels-last + bf16, batch 64 (eval.precision=auto here)", 64,
         "bf16", "matmul", True),
    Path("fast-bf16", "matmul resize + channels-last + bf16, batch 16", 16,
         "bf16", "matmul", True),
    Path("fast-bf16-1thread", "fast-bf16 on one intra-op thread", 16, "bf16", "matmul", True, threads=1),
]  # fmt: skip


def _fid(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = fid_features_to_statistics(a.double()), fid_features_to_statistics(b.double())
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


def _timed(path: Path, space: FeatureSpace, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    before = torch.get_num_threads()
    if path.threads:
        torch.set_num_threads(path.threads)
    try:
        t0 = time.perf_counter()
        feats = extract_features(x, space, batch_size=path.batch)["2048"]
        return feats, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def preprocessing(x: torch.Tensor) -> dict:
    """Seconds per image of uint8 conversion + resize, gather (torch-fidelity) vs matmul, and their max difference."""
    u8 = to_extractor_input(x)
    out = {}
    results = {}
    for method in ("tf1", "matmul"):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            results[method] = torch.cat([resize_tf1(u8[i : i + CHUNK].float(), 299, method)
                                         for i in range(0, len(u8), CHUNK)])  # fmt: skip
            best = min(best, time.perf_counter() - t0)
        out[f"{method}_ms_per_image"] = 1000 * best / len(x)
    out["speedup"] = out["tf1_ms_per_image"] / out["matmul_ms_per_image"]
    out["max_abs_diff_0_255"] = float((results["tf1"] - results["matmul"]).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="images per set (rounded up to a multiple of 64)")
    parser.add_argument("--paths", nargs="*", default=None, help="subset of path names (baseline always runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for every path")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    n = -(-args.n // CHUNK) * CHUNK
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [p for p in PATHS if args.paths is None or p.name == "baseline" or p.name in args.paths]
    train = load_dataset(DataConfig(name="mnist", split="train", limit=n)).data
    test = load_dataset(DataConfig(name="mnist", split="test", limit=n)).data
    spaces = {p.name: p.space() for p in paths}
    for p in paths:  # warm-up: TorchScript profiles its first two calls, oneDNN builds kernels once
        for _ in range(2):
            _timed(p, spaces[p.name], test[:2])
    feats: dict[str, dict[str, list]] = {p.name: {"train": [], "test": []} for p in paths}
    seconds = dict.fromkeys(feats, 0.0)
    t_start = time.perf_counter()
    for split, x in (("train", train), ("test", test)):
        for i in range(0, n, CHUNK):  # interleaved: every path sees the same load
            for p in paths:
                f, s = _timed(p, spaces[p.name], x[i : i + CHUNK])
                feats[p.name][split].append(f)
                seconds[p.name] += s
            print(f"{split} {i + CHUNK}/{n} done, {time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    fids = {k: _fid(torch.cat(v["train"]), torch.cat(v["test"])) for k, v in feats.items()}
    base_fid, base_rate = fids["baseline"], 2 * n / seconds["baseline"]
    base_feats = torch.cat(feats["baseline"]["test"])
    rows = []
    for p in paths:
        rate = 2 * n / seconds[p.name]
        rel = (fids[p.name] - base_fid) / base_fid
        f = torch.cat(feats[p.name]["test"])
        rows.append({
            "path": p.name, "what": p.what, "batch": p.batch, "precision": p.precision, "resize": p.resize,
            "channels_last": p.channels_last, "threads": p.threads or torch.get_num_threads(),
            "images_per_s": rate, "speedup": rate / base_rate, "fid": fids[p.name], "fid_rel_change": rel,
            "feature_rel_err": float((f - base_feats).norm() / base_feats.norm()),
            "passes": abs(rel) <= TOLERANCE,
        })  # fmt: skip
    passing = [r for r in rows if r["passes"]]
    best = max(passing, key=lambda r: r["images_per_s"])
    bf16, why = cpu_has_fast_bf16()
    report = {
        "command": " ".join(["benchmarks/fid_speed.py", *sys.argv[1:]]),
        "n_per_set": n, "sets": "MNIST train[:n] vs MNIST test[:n]", "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": bf16, "cpu_bf16_reason": why, "load_avg_1min": _loadavg(),
        "wall_s": time.perf_counter() - t_start, "tolerance": TOLERANCE, "paths": rows,
        "preprocessing": preprocessing(torch.cat([train, test])),
        "fastest_passing": best["path"],
        "protocol_images": PROTOCOL_IMAGES,
        "protocol_hours": {r["path"]: PROTOCOL_IMAGES / r["images_per_s"] / 3600 for r in rows},
    }  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{n} vs {n} MNIST images, torch threads {report['torch_threads']}, {why}")
    print(f"{'path':20s} {'img/s':>7s} {'x':>6s} {'FID':>9s} {'dFID':>8s} {'feat err':>9s} ok  10k protocol h")
    for r in rows:
        print(f"{r['path']:20s} {r['images_per_s']:7.2f} {r['speedup']:6.2f} {r['fid']:9.4f} "
              f"{100 * r['fid_rel_change']:7.3f}% {r['feature_rel_err']:9.2e} {'yes' if r['passes'] else 'NO ':3s} "
              f"{report['protocol_hours'][r['path']]:6.2f}")  # fmt: skip
    print("preprocessing:", report["preprocessing"])
    print("fastest path within 0.5 %:", best["path"])


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


if __name__ == "__main__":
    main()
