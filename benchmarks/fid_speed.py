"""TF-Inception feature extraction: speed of each backend / speed-up and its effect on FID, in one run.

Every path extracts features of the same two sets (MNIST training images vs MNIST
test images) and scores FID between them. FID changes are measured against the
exact float32 path (TorchScript, float32); a path is acceptable when its FID differs
from that by at most 0.1 %. Speed-ups are given against both the default before the
runtimes (``default-before``: TorchScript + bf16 autocast, what ``precision: auto``
ran on a CPU with native bf16) and the exact path. To keep the ratios honest on a
shared machine, the paths run interleaved: each chunk of 64 images goes through
every path before the next chunk, so a change of load hits all paths alike.

    PYTHONPATH=$PWD .venv/bin/python -W ignore benchmarks/fid_speed.py --n 256
    PYTHONPATH=$PWD .venv/bin/python -W ignore benchmarks/fid_speed.py --n 128 --paths openvino-f32 --json

Paths: ``default-before`` and ``exact-float32`` (TorchScript, matmul resize, channels-last,
batch 64) always run; the candidates are OpenVINO float32 and bf16, ONNX Runtime float32,
and OpenVINO float32 with one stream, at batch 16 and on one thread. (TorchScript with
oneDNN graph fusion, ``torch.jit.freeze`` + ``torch.jit.enable_onednn_fusion``, failed on
this graph with torch 2.14.1: "could not add op to the graph".)
Preprocessing (uint8 -> float, resize 28 -> 299) is timed on its own too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from vegan.config import DataConfig
from vegan.data import load_dataset
from vegan.metrics.fidelity import FeatureSpace, extract_features, to_extractor_input
from vegan.metrics.inception import InceptionTFOffline, cpu_has_fast_bf16, resize_tf1
from vegan.metrics.runtimes import make_runner

CHUNK = 64
TOLERANCE = 0.001  # relative FID change (vs the exact float32 path) allowed for a speed-up
PROTOCOL_IMAGES = 10_000 * 7  # 10k test-set reference + 6 sets of 10k (floor, recon, AE-OT, AE-OT-GAN, Gaussian, GMM)


@dataclass
class Path:
    name: str
    what: str
    batch: int
    precision: str = "float32"
    backend: str = "torch"
    threads: int | None = None  # None: torch's default
    streams: int | None = None  # OpenVINO streams (None: one per thread)

    def space(self) -> FeatureSpace:
        with _threads(self.threads):  # the runtimes take their thread count when compiled
            ex = InceptionTFOffline("inception-tf-offline", ["2048"], precision=self.precision, resize="matmul",
                                    channels_last=True, backend=self.backend)  # fmt: skip
            if self.streams:
                ex.runner = make_runner(self.backend, self.precision, ex.net, ex.digest, streams=self.streams)
        return FeatureSpace(ex, f"bench-{self.name}", "2048", None, {})


BASELINE, EXACT = "default-before", "exact-float32"
PATHS = [
    Path(BASELINE, "before: TorchScript + bf16 autocast (precision auto on a native-bf16 CPU)", 64, "bf16"),
    Path(EXACT, "TorchScript float32 (precision float32)", 64),
    Path("openvino-f32", "OpenVINO, INFERENCE_PRECISION_HINT f32, one stream per thread", 64, backend="openvino"),
    Path("openvino-f32-1stream", "OpenVINO f32, one stream of all threads", 64, backend="openvino", streams=1),
    Path("openvino-bf16", "OpenVINO, INFERENCE_PRECISION_HINT bf16 (its AMX default)", 64, "bf16", "openvino"),
    Path("onnxruntime-f32", "ONNX Runtime, CPU execution provider", 64, backend="onnxruntime"),
    Path("openvino-f32-b16", "OpenVINO f32, batch 16", 16, backend="openvino"),
    Path("openvino-f32-1thread", "OpenVINO f32 on one thread", 64, backend="openvino", threads=1),
]  # fmt: skip


@contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fid(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = fid_features_to_statistics(a.double()), fid_features_to_statistics(b.double())
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


def _timed(path: Path, space: FeatureSpace, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    with _threads(path.threads):
        t0 = time.perf_counter()
        feats = extract_features(x, space, batch_size=path.batch)["2048"]
        return feats, time.perf_counter() - t0


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
    paths = [p for p in PATHS if args.paths is None or p.name in (BASELINE, EXACT) or p.name in args.paths]
    train = load_dataset(DataConfig(name="mnist", split="train", limit=n)).data
    test = load_dataset(DataConfig(name="mnist", split="test", limit=n)).data
    spaces = {}
    for p in paths:
        t0 = time.perf_counter()
        spaces[p.name] = p.space()
        for _ in range(2):  # warm-up: TorchScript profiles its first two calls, oneDNN builds kernels once
            _timed(p, spaces[p.name], test[:2])
        print(f"{p.name}: built and warmed up in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    feats: dict[str, dict[str, list]] = {p.name: {"train": [], "test": []} for p in paths}
    seconds = dict.fromkeys(feats, 0.0)
    load = [_loadavg()]
    t_start = time.perf_counter()
    for split, x in (("train", train), ("test", test)):
        for i in range(0, n, CHUNK):  # interleaved: every path sees the same load
            for p in paths:
                f, s = _timed(p, spaces[p.name], x[i : i + CHUNK])
                feats[p.name][split].append(f)
                seconds[p.name] += s
            load.append(_loadavg())
            print(f"{split} {i + CHUNK}/{n} done, {time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    fids = {k: _fid(torch.cat(v["train"]), torch.cat(v["test"])) for k, v in feats.items()}
    rate = {k: 2 * n / v for k, v in seconds.items()}
    exact_fid = fids[EXACT]
    exact_feats = torch.cat(feats[EXACT]["test"])
    rows = []
    for p in paths:
        rel = (fids[p.name] - exact_fid) / exact_fid
        f = torch.cat(feats[p.name]["test"])
        rows.append({
            "path": p.name, "what": p.what, "backend": p.backend, "batch": p.batch, "precision": p.precision,
            "threads": p.threads or torch.get_num_threads(), "images_per_s": rate[p.name],
            "s_per_image": 1 / rate[p.name], "speedup_vs_default_before": rate[p.name] / rate[BASELINE],
            "speedup_vs_exact": rate[p.name] / rate[EXACT], "fid": fids[p.name], "fid_rel_change": rel,
            "feature_rel_err": float((f - exact_feats).norm() / exact_feats.norm()),
            "passes": abs(rel) <= TOLERANCE,
        })  # fmt: skip
    best = max((r for r in rows if r["passes"]), key=lambda r: r["images_per_s"])
    bf16, why = cpu_has_fast_bf16()
    loads = [v for v in load if v is not None]
    report = {
        "command": " ".join(["benchmarks/fid_speed.py", *sys.argv[1:]]),
        "n_per_set": n, "sets": "MNIST train[:n] vs MNIST test[:n]", "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": bf16, "cpu_bf16_reason": why,
        "load_avg_1min": {"min": min(loads), "max": max(loads)} if loads else None,
        "wall_s": time.perf_counter() - t_start, "tolerance": TOLERANCE, "paths": rows,
        "preprocessing": preprocessing(torch.cat([train, test])),
        "fastest_passing": best["path"],
        "protocol_images": PROTOCOL_IMAGES,
        "protocol_hours": {r["path"]: PROTOCOL_IMAGES / r["images_per_s"] / 3600 for r in rows},
    }  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{n} vs {n} MNIST images, torch threads {report['torch_threads']}, {why}, load {report['load_avg_1min']}")
    print(f"{'path':22s} {'img/s':>7s} {'s/img':>7s} {'x before':>8s} {'x exact':>8s} {'FID':>9s} {'dFID':>8s} "
          f"{'feat err':>9s} ok  70k images h")  # fmt: skip
    for r in rows:
        print(f"{r['path']:22s} {r['images_per_s']:7.2f} {r['s_per_image']:7.4f} {r['speedup_vs_default_before']:8.2f} "
              f"{r['speedup_vs_exact']:8.2f} {r['fid']:9.4f} {100 * r['fid_rel_change']:7.3f}% "
              f"{r['feature_rel_err']:9.2e} {'yes' if r['passes'] else 'NO ':3s} "
              f"{report['protocol_hours'][r['path']]:6.2f}")  # fmt: skip
    print("preprocessing:", report["preprocessing"])
    print(f"fastest path within {100 * TOLERANCE:.1f} % of the exact FID:", best["path"])


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


if __name__ == "__main__":
    main()
