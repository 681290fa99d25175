"""The GPU path of vegan, measured in one command: one report for one prepared device run.

    python benchmarks/gpu_check.py --out DIR [--budget-s 480] [--device cuda]
    python benchmarks/gpu_check.py --out DIR --dry-run        # CPU, tiny sizes, well under a minute

Writes DIR/gpu_check.json and DIR/gpu_check.md and prints the markdown. Four sections, each
timed and run on its own: a section that fails is recorded with its error and the others still
run. Each gets a share of ``--budget-s`` (what a section leaves unused goes to the later ones)
and stops early when its time is out, so the whole check ends inside one device lease.

* ``kernel``: ``vegan.ot.assign_counts`` at n = 1e6 targets, d = 64, for ``precision`` float32
  and screened: GFLOP/s (2 * samples * n * d flops of the score GEMM) against peaks measured in
  the same run by square GEMMs (IEEE fp32; fp32 under the screened mode, i.e. TF32 on CUDA and
  oneDNN bf16 on CPU; bf16 operands), the rate at the solver's 4,096-sample slices, and the share
  of argmax cells identical to a float64 argmax on a small sample.
* ``ot_solve``: ``NewtonSolver`` to a max relative cell error of 0.3 at n = 1e6, d = 64 on a
  Gaussian mixture; time, iterations and the verified error, or, when the share runs out first,
  the iteration and counting rates and what the final check would cost at that rate.
* ``pipeline``: ``vegan.pipeline.run_pipeline`` on MNIST (the ``demo`` preset, every device
  setting on the GPU) in a child process stopped at the deadline; each stage's seconds from the
  run's manifest, AE training samples/s, the FID of each set (a diagnostic at that sample
  count), and Inception feature images/s (TF-Inception when its weights file is on the machine,
  else the same architecture with random weights: a speed figure only).
* ``mixed``: AE and GAN training steps in float32 and under bf16 autocast: speed, and whether
  the losses stay finite.

``--dry-run`` runs every section on CPU at tiny sizes (the ``tiny`` preset on ``digits``) to
exercise every code path except the CUDA kernel branch; its report says so at the top.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARES = {"kernel": 0.125, "ot_solve": 0.25, "pipeline": 0.5, "mixed": 0.125}
"""Share of the budget per section, in run order; the pipeline gets the ~4 minutes it needs of 480 s."""


@dataclass(frozen=True)
class Sizes:
    kernel_n: int  # targets of the kernel section
    kernel_samples: int  # samples per timed kernel call
    agree_samples: int  # samples compared with a float64 argmax
    peak_size: int  # side of the square peak GEMMs
    solve_n: int
    solve_d: int
    preset: str
    overrides: tuple[str, ...]
    inception_images: int
    inception_size: int  # input side of the stand-in Inception (TF-Inception always takes 299)
    mixed_data: str
    mixed_limit: int
    mixed_ae: tuple[str, ...]  # AEConfig fields as key=value
    mixed_ae_steps: int
    mixed_gan_steps: int
    d: int = 64


FULL = Sizes(
    kernel_n=1_000_000, kernel_samples=1 << 18, agree_samples=2048, peak_size=8192,
    solve_n=1_000_000, solve_d=64,
    preset="demo", overrides=(),
    inception_images=2048, inception_size=299,
    mixed_data="mnist", mixed_limit=16384,
    mixed_ae=("arch=deep-conv", "latent_dim=32", "width=48", "batch_size=128"),  # configs/mnist-fid10k.yaml
    mixed_ae_steps=300, mixed_gan_steps=100,
)  # fmt: skip
DRY = Sizes(
    kernel_n=4096, kernel_samples=4096, agree_samples=256, peak_size=512,
    solve_n=128, solve_d=4,
    preset="tiny",
    overrides=("data.limit=256", "ae.steps=20", "gan.steps=4", "ot.max_iter=20", "generate.n_samples=64",
               "generate.centroid_samples=4096", "eval.n_samples=64", "eval.kid_subset_size=32",
               "eval.domain_steps=20"),
    inception_images=2, inception_size=75,
    mixed_data="digits", mixed_limit=256,
    mixed_ae=("latent_dim=8", "width=16", "batch_size=32"),
    mixed_ae_steps=6, mixed_gan_steps=4,
)  # fmt: skip


class OutOfTime(Exception):
    """A section's share of the budget is spent."""


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    dry_run: bool
    deadline: float = math.inf

    def check_time(self) -> None:
        if time.perf_counter() > self.deadline:
            raise OutOfTime

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ----------------------------------------------------------------- helpers
def mixture_codes(n: int, d: int, seed: int = 0, k: int = 64) -> np.ndarray:
    """Clustered synthetic codes: ``k`` Gaussian clusters (what AE codes look like, roughly)."""
    rng = np.random.default_rng(seed)
    means = 2 * rng.standard_normal((k, d), dtype=np.float32)
    y = 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    y += means[rng.integers(0, k, n)]
    return y


def best_time(ctx: Context, fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best of ``repeats`` timed calls after a warm-up; fewer when the section's time is out."""
    fn()
    ctx.sync()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ctx.sync()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() > ctx.deadline:
            break
    return best


def peak_gflops(ctx: Context, kind: str) -> float:
    """Square GEMM rate: ``float32`` IEEE, ``screened`` (fp32 under the screened mode), ``bf16`` operands."""
    from vegan.ot.assign import _gemm_mode

    size = ctx.sizes.peak_size
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=ctx.device).to(dtype) for _ in range(2))
    c = torch.empty(size, size, device=ctx.device, dtype=dtype)

    def mm():
        with _gemm_mode("screened" if kind == "screened" else "float32"):
            torch.mm(a, b, out=c)

    return 2 * size**3 / best_time(ctx, mm) / 1e9


def argmax64(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, cols: int = 16384) -> torch.Tensor:
    """Reference cells: float64 scores, chunked over targets (lowest index on ties)."""
    x64, h64 = x.double(), h.double()
    best = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    idx = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, y.shape[0], cols):
        v, i = torch.addmm(h64[s : s + cols], x64, y[s : s + cols].double().T).max(dim=1)
        better = v > best
        best, idx = torch.where(better, v, best), torch.where(better, i + s, idx)
    return idx


def steady_rate(history: list[dict], per_step: int) -> float:
    """Examples per second from the second logged row to the last: the first steps (allocator,
    cuDNN and oneDNN set-up) are left out, so the first of two timed runs is not penalised."""
    a, b = history[min(1, len(history) - 2)], history[-1]
    return (b["step"] - a["step"]) * per_step / max(b["seconds"] - a["seconds"], 1e-9)


def _numbers(figures: dict) -> dict:
    """JSON-safe figures: numpy and torch scalars as Python numbers."""
    out = {}
    for k, v in figures.items():
        if isinstance(v, dict):
            out[k] = _numbers(v)
        elif isinstance(v, (np.generic, torch.Tensor)):
            out[k] = v.item()
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------- sections
def section_kernel(ctx: Context, fig: dict) -> None:
    from vegan.ot.assign import assign, assign_counts, resolve_precision
    from vegan.ot.problem import make_problem
    from vegan.ot.solver import voronoi_potential

    s, dev = ctx.sizes, ctx.device
    problem = make_problem(mixture_codes(s.kernel_n, s.d))
    y = problem.targets(dev)
    h = torch.as_tensor(voronoi_potential(problem.y), dtype=torch.float32, device=dev)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(s.kernel_samples, s.d, generator=g) * 2 - 1).to(dev)
    flops = 2 * s.kernel_samples * s.kernel_n * s.d
    fig.update(n=s.kernel_n, d=s.d, samples=s.kernel_samples, auto_precision=resolve_precision("auto", dev, s.d))
    peaks = fig.setdefault("peak_gflops", {})
    for kind in ("float32", "screened", "bf16"):
        peaks[kind] = peak_gflops(ctx, kind)
    ref = argmax64(x[: s.agree_samples], y, h)
    for precision in ("float32", "screened"):
        ctx.check_time()
        t = best_time(ctx, lambda p=precision: assign_counts(x, y, h, precision=p, want_idx=False))
        gf = flops / t / 1e9
        xs = x[: min(4096, s.kernel_samples)]  # the solver's slice size (vegan.ot.problem.MAX_SLICE)
        t_slice = best_time(ctx, lambda p=precision, xs=xs: assign_counts(xs, y, h, precision=p, want_idx=False))
        agree = (assign(x[: s.agree_samples], y, h, precision=precision) == ref).double().mean()
        fig[precision] = {
            "seconds": t,
            "gflops": gf,
            "frac_of_same_precision_peak": gf / peaks[precision],
            "frac_of_bf16_peak": gf / peaks["bf16"],
            "slice_4096_gflops": 2 * xs.shape[0] * s.kernel_n * s.d / t_slice / 1e9,
            "agreement_with_float64": agree,
        }


class DeadlineEvaluator:
    """The solver's local evaluator, counting in groups of slices so a solve stops at the deadline.

    Results are the same as :class:`vegan.ot.LocalEvaluator`'s (``Counts.concat`` keeps slice
    order); it also adds up the samples it counted and the seconds it took.
    """

    GROUP = 64  # slices between deadline checks (~0.5 s of counting at n = 1e6 on one GPU)

    def __init__(self, ctx: Context, problem):
        from vegan.ot.counting import LocalEvaluator

        self.ctx, self.inner = ctx, LocalEvaluator(problem, problem.sampling, str(ctx.device))
        self.samples, self.seconds = 0, 0.0

    def __call__(self, h, tag, iteration, n_slices, slice_size, margin=0.0):
        from vegan.ot.counting import Counts, count_slices

        parts = []
        for lo in range(0, n_slices, self.GROUP):
            self.ctx.check_time()
            t = time.perf_counter()
            slices = range(lo, min(n_slices, lo + self.GROUP))
            parts.append(
                count_slices(self.inner.y, h, self.inner.sampling, tag=tag, iteration=iteration, slices=slices,
                             slice_size=slice_size, margin=margin)
            )  # fmt: skip
            self.seconds += time.perf_counter() - t
            self.samples += len(slices) * slice_size
        return Counts.concat(parts, self.inner.y.shape[0])

    def deficits(self, h, cells, iteration):
        return self.inner.deficits(h, cells, iteration)


def section_ot_solve(ctx: Context, fig: dict) -> None:
    from vegan.ot.problem import make_problem
    from vegan.ot.solver import NewtonSolver

    n, d = ctx.sizes.solve_n, ctx.sizes.solve_d
    t0 = time.perf_counter()
    problem = make_problem(mixture_codes(n, d, seed=2))
    evaluate = DeadlineEvaluator(ctx, problem)
    solver = NewtonSolver(tol=0.3)
    state = solver.init(problem)
    fig.update(n=n, d=d, tol=solver.tol, setup_s=time.perf_counter() - t0, first_samples=state.n_samples,
               cap_samples=solver.cap_samples(problem), check_samples=solver.check_size(problem))  # fmt: skip
    t1, stopped = time.perf_counter(), None
    try:
        while not solver.done(state) and state.iteration < solver.max_iter:
            state = solver.step(state, problem, evaluate)
    except OutOfTime:
        stopped = "share of the budget spent"
    seconds = time.perf_counter() - t1
    gflops = 2 * evaluate.samples * n * d / max(evaluate.seconds, 1e-9) / 1e9
    fig.update(
        converged=solver.done(state),
        stopped=stopped or ("converged" if solver.done(state) else "max_iter"),
        seconds=seconds,
        iterations=state.iteration,
        seconds_per_iteration=seconds / max(state.iteration, 1),
        counting_s=evaluate.seconds,
        newton_s=seconds - evaluate.seconds,
        samples_counted=evaluate.samples,
        counting_gflops=gflops,
        last_rms_rel_error=state.history[-1]["rms_rel_error"] if state.history else math.nan,
        verified_max_error=state.last_eval["max"] if state.last_eval else math.nan,
        # What the one fresh check of the converged solve costs at the measured counting rate.
        projected_check_s=2 * fig["check_samples"] * n * d / (gflops * 1e9) if gflops > 0 else math.nan,
    )


_CHILD = """
import sys
from vegan.config import PipelineConfig
from vegan.pipeline import run_pipeline
run_pipeline(PipelineConfig.model_validate_json(sys.argv[1]), sys.argv[2], progress=False)
"""


def inception_rate(ctx: Context, fig: dict) -> None:
    """Feature images/s in float32 (the pipeline's eval precision on a GPU): TF-Inception when its
    TorchScript weights are here, else torchvision's Inception-v3 with random weights (speed only)."""
    from vegan.metrics.inception import InceptionTFOffline, InceptionWeightsError, default_inception_path, resize_tf1

    s, dev = ctx.sizes, ctx.device
    try:
        path = default_inception_path()
    except InceptionWeightsError:
        path = None
    if path is not None and path.is_file():
        ext = InceptionTFOffline("inception-tf-offline", ["2048"], feature_extractor_weights_path=str(path),
                                 resize="matmul", channels_last=True).to(dev)  # fmt: skip

        def net(x):
            return ext(x)[0]

        fig["inception"] = f"TF-Inception ({path.name}), 299x299"
    else:
        import torchvision

        body = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval().to(dev)
        body.fc = torch.nn.Identity()  # the 2048-d pool features, as FID uses
        body = body.to(memory_format=torch.channels_last)

        def net(x):
            x = (resize_tf1(x.float(), s.inception_size, "matmul") - 128) / 128
            return body(x.contiguous(memory_format=torch.channels_last))

        fig["inception"] = (f"stand-in: torchvision Inception-v3, random weights, {s.inception_size}x"
                            f"{s.inception_size} (no TF-Inception weights file here; speed only)")  # fmt: skip
    batch = min(64, s.inception_images)  # EvalConfig.batch_size
    images = torch.randint(0, 256, (s.inception_images, 3, 28, 28), dtype=torch.uint8, device=dev)

    def run():
        with torch.no_grad():
            for i in range(0, len(images), batch):
                out = net(images[i : i + batch])
        if out.shape[1] != 2048:
            raise RuntimeError(f"Inception features of shape {tuple(out.shape)}, expected (N, 2048)")

    fig["inception_images_per_s"] = s.inception_images / best_time(ctx, run, repeats=1)
    fig["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32) if dev.type == "cuda" else False


def section_pipeline(ctx: Context, fig: dict) -> None:
    from vegan.config import load_config
    from vegan.manifest import Manifest
    from vegan.metrics.inception import InceptionWeightsError, default_inception_path
    from vegan.stages.registry import plan
    from vegan.storage import Storage

    try:
        inception_rate(ctx, fig)
    except Exception as exc:  # noqa: BLE001  (the pipeline below still runs)
        fig["inception_error"] = f"{type(exc).__name__}: {exc}"
    dev = str(ctx.device)
    overrides = [*ctx.sizes.overrides, *(f"{k}.device={dev}" for k in ("ae", "ot", "gan", "eval"))]
    if not ctx.dry_run:
        try:
            if default_inception_path().is_file():
                overrides.append("eval.extractor=inception-tf")
        except InceptionWeightsError:
            pass  # eval.extractor stays auto: the domain classifier
    cfg = load_config(ctx.sizes.preset, overrides=overrides)
    fig.update(preset=ctx.sizes.preset, overrides=" ".join(overrides))
    with tempfile.TemporaryDirectory(prefix="gpu-check-run-") as run_dir:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        left = ctx.deadline - time.perf_counter()
        t0, timed_out, proc = time.perf_counter(), False, None
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, cfg.model_dump_json(), run_dir], env=env,
                                  capture_output=True, text=True, timeout=max(left, 1))  # fmt: skip
        except subprocess.TimeoutExpired:
            timed_out = True
        fig["seconds"] = time.perf_counter() - t0
        manifest, store = Manifest(Storage(run_dir), cfg), Storage(run_dir)
        status = manifest.status()
        stages = fig.setdefault("stages", {})
        for stage in plan("eval"):
            entry = {"status": status[stage]["status"]}
            if manifest.is_done(stage):
                entry["seconds"] = manifest.done_info(stage).get("seconds")
            stages[stage] = entry
        if manifest.is_done("ae"):
            hist = store.sub(manifest.output("ae")).read_json("history.json")
            fig["ae_samples_per_s"] = steady_rate(hist, cfg.ae.batch_size)
        if manifest.is_done("eval"):
            info = manifest.done_info("eval")
            fig["extractor"] = info.get("extractor")
            fig["fid"] = {name: m["fid"] for name, m in info["metrics"].items() if "fid" in m}
            fig["fid_label"] = (f"diagnostic: {cfg.eval.n_samples} samples per set, {info.get('extractor')} "
                                f"features, protocol {info.get('protocol')}; not a headline figure")  # fmt: skip
        if timed_out:
            running = [s for s, e in stages.items() if e["status"] != "done"] or ["(after the last stage)"]
            raise OutOfTime(f"pipeline stopped at its share of the budget, during stage {running[0]}")
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline exited {proc.returncode}: {proc.stderr[-1500:]}")


def section_mixed(ctx: Context, fig: dict) -> None:
    from vegan.config import AEConfig, DataConfig, GANConfig, parse_overrides
    from vegan.data import load_dataset
    from vegan.gan import finetune_decoder
    from vegan.models import build_model
    from vegan.training import train_model

    s, dev = ctx.sizes, str(ctx.device)
    ds = load_dataset(DataConfig(name=s.mixed_data, limit=s.mixed_limit))
    ae_fields = parse_overrides(list(s.mixed_ae))
    fig.update(data=f"{s.mixed_data}[:{len(ds)}]", ae=" ".join(s.mixed_ae), ae_steps=s.mixed_ae_steps,
               gan_steps=s.mixed_gan_steps)  # fmt: skip
    for precision in ("float32", "bf16"):
        ctx.check_time()
        cfg = AEConfig(**ae_fields, steps=s.mixed_ae_steps, device=dev, precision=precision)
        t = time.perf_counter()
        res = train_model(build_model(cfg, ds.shape), ds, cfg, progress=False, log_every=max(1, s.mixed_ae_steps // 2))
        ae_s, last = time.perf_counter() - t, res.history[-1]
        out = fig.setdefault(precision, {})
        out.update(ae_seconds=ae_s, ae_samples_per_s=steady_rate(res.history, cfg.batch_size), ae_loss=last["loss"],
                   ae_finite=math.isfinite(last["loss"]))  # fmt: skip
        ctx.check_time()
        model = res.model.to(ctx.device)
        with torch.no_grad():
            codes = torch.cat([model.encode(b.to(ctx.device)).cpu() for b in ds.data.split(512)])
        model.cpu()
        gcfg = GANConfig(steps=s.mixed_gan_steps, device=dev, precision=precision, batch_size=64)
        t = time.perf_counter()
        gres = finetune_decoder(res.model.decoder, ds, codes, None, gcfg, arch=cfg.arch, width=cfg.width,
                                progress=False, log_every=max(1, s.mixed_gan_steps // 2))  # fmt: skip
        g_s, glast = time.perf_counter() - t, gres.history[-1]
        losses = [v for k, v in glast.items() if k not in ("step", "seconds")]
        out.update(gan_seconds=g_s, gan_steps_per_s=steady_rate(gres.history, 1), gan_content=glast["content"],
                   gan_finite=all(map(math.isfinite, losses)))  # fmt: skip
    if "bf16" in fig and "float32" in fig:
        fig["bf16_ae_speedup"] = fig["bf16"]["ae_samples_per_s"] / fig["float32"]["ae_samples_per_s"]
        fig["bf16_gan_speedup"] = fig["bf16"]["gan_steps_per_s"] / fig["float32"]["gan_steps_per_s"]
        fig["bf16_vs_float32_ae_loss"] = fig["bf16"]["ae_loss"] / fig["float32"]["ae_loss"]


SECTIONS: dict[str, Callable[[Context, dict], None]] = {
    "kernel": section_kernel,
    "ot_solve": section_ot_solve,
    "pipeline": section_pipeline,
    "mixed": section_mixed,
}


# ----------------------------------------------------------------- report
def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "cpu_count": os.cpu_count()}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability(device))))  # fmt: skip
    return env


def _rows(figures: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in figures.items():
        if isinstance(v, dict):
            rows += _rows(v, f"{prefix}{k}.")
        else:
            rows.append((prefix + k, v))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    head = "# GPU check: " + ("**DRY RUN (CPU)**" if report["dry_run"] else report["environment"].get("gpu", "device"))
    lines = [head, ""]
    if report["dry_run"]:
        lines += ["> **Dry run (CPU)**: tiny sizes on the CPU. These figures test the code paths, not the",
                  "> hardware; the CUDA kernel branch did not run.", ""]  # fmt: skip
    env = ", ".join(f"{k} {_fmt(v)}" for k, v in report["environment"].items())
    lines += [f"Environment: {env}. Budget {report['budget_s']:.0f} s, used {report['seconds']:.1f} s.", ""]
    for name, sec in report["sections"].items():
        state = "ok" if sec["ok"] else f"FAILED: {sec['error']}" if sec["error"] else "stopped"
        lines += [f"## {name} ({sec['seconds']:.1f} s of a {sec['share_s']:.0f} s share; {state})", ""]
        if sec.get("note"):
            lines += [sec["note"], ""]
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _rows(sec["figures"])]
        lines.append("")
    return "\n".join(lines)


def run_sections(ctx: Context, budget_s: float, t_start: float) -> dict:
    out = {}
    names = list(SECTIONS)
    for i, name in enumerate(names):
        left = budget_s - (time.perf_counter() - t_start)
        share = max(left, 0.0) * SHARES[name] / sum(SHARES[n] for n in names[i:])
        t = time.perf_counter()
        ctx.deadline = t + share
        fig: dict = {}
        sec = {"ok": False, "error": None, "note": None, "share_s": share}
        try:
            SECTIONS[name](ctx, fig)
            sec["ok"] = True
        except OutOfTime as exc:  # figures so far stand; the section says where it stopped
            sec["note"] = f"stopped early: {str(exc) or 'share of the budget spent'}"
        except Exception as exc:  # noqa: BLE001  (one section's failure must not cost the others)
            sec["error"] = f"{type(exc).__name__}: {exc}"
            sec["traceback"] = traceback.format_exc(limit=8)
        finally:
            gc.collect()
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
        sec["seconds"] = time.perf_counter() - t
        sec["figures"] = _numbers(fig)
        out[name] = sec
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall time for all sections together")
    p.add_argument("--device", default=None, help="cuda (default), cuda:N; cpu in a dry run")
    p.add_argument("--dry-run", action="store_true", help="every section on CPU at tiny sizes")
    args = p.parse_args(argv)
    from vegan.device import resolve_device

    try:
        device = resolve_device(args.device or ("cpu" if args.dry_run else "cuda"))
    except ValueError as exc:
        print(f"gpu_check: {exc} (--dry-run runs every section on the CPU)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    ctx = Context(device, DRY if args.dry_run else FULL, args.dry_run)
    report = {"dry_run": args.dry_run, "mode": "dry run (CPU)" if args.dry_run else "device",
              "environment": environment(device), "budget_s": args.budget_s, "sizes": asdict(ctx.sizes)}  # fmt: skip
    report["sections"] = run_sections(ctx, args.budget_s, t0)
    report["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
