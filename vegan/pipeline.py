"""The AE-OT(-GAN) pipeline as plain functions, one per stage.

Each stage reads its inputs from the run's storage, writes its outputs there,
and finishes by writing a done marker (see :mod:`vegan.manifest`). Stages are
idempotent: a finished stage returns its recorded info without touching
anything, and an interrupted one resumes from its checkpoints. The Prefect
layer (``tasks/``, ``flows/``) wraps exactly these functions; a notebook can call
:func:`run_pipeline` directly.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch

from vegan.checkpoint import CheckpointDir
from vegan.config import STAGES, PipelineConfig
from vegan.data import Dataset, load_dataset
from vegan.latents import LatentError, extract_latents, load_codes
from vegan.manifest import Manifest
from vegan.storage import Storage

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run (missing upstream output, unusable input)."""


class Run:
    """One run folder plus its config: the context every stage function gets."""

    def __init__(self, cfg: PipelineConfig, storage: Storage | str, progress: bool = True):
        self.cfg = cfg
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.manifest = Manifest(self.storage, cfg)
        self.keys = self.manifest.keys
        self.progress = progress

    def dir(self, stage: str) -> Storage:
        return self.storage.sub(self.manifest.output(stage))

    def zarr_store(self, stage: str, read_only: bool = False):
        return self.storage.zarr_store(self.manifest.output(stage), read_only=read_only)

    def require(self, stage: str) -> None:
        if not self.manifest.is_done(stage):
            raise StageError(
                f"stage {stage!r} ({self.keys[stage]}) has not finished in {self.storage.url}: run it first"
            )

    # ---------------------------------------------------------- shared inputs
    @cached_property
    def dataset(self) -> Dataset:
        return load_dataset(self.cfg.data)

    @cached_property
    def model(self):
        """The trained autoencoder (or cookbook model), on CPU, in eval mode."""
        from vegan.models import build_model

        self.require("ae")
        saved = self.dir("ae").load_torch("model.pt")
        model = build_model(self.cfg.ae, tuple(saved["shape"]))
        model.load_state_dict(saved["state_dict"])
        return model.eval()

    @cached_property
    def codes(self) -> np.ndarray:
        self.require("latents")
        return load_codes(self.zarr_store("latents", read_only=True), expected_dim=self.cfg.ae.latent_dim)

    @cached_property
    def generated_codes(self) -> np.ndarray:
        import zarr

        self.require("generate")
        codes = np.asarray(zarr.open_group(self.zarr_store("generate", read_only=True), mode="r")["codes"][:])
        if codes.shape[1] != self.cfg.ae.latent_dim:
            raise LatentError(
                f"generated codes have dimension {codes.shape[1]}, the decoder expects {self.cfg.ae.latent_dim}"
            )
        return codes

    @cached_property
    def generator(self) -> torch.nn.Module:
        """The AE-OT-GAN generator when fine-tuning ran, else the plain decoder."""
        import copy

        decoder = copy.deepcopy(self.model.decoder)
        if self.cfg.gan.enabled and self.cfg.gan.steps > 0:
            self.require("gan")
            decoder.load_state_dict(self.dir("gan").load_torch("generator.pt")["state_dict"])
        return decoder.eval()

    def has_encoder(self) -> bool:
        return self.cfg.ae.model != "wgan-gp"


# ------------------------------------------------------------------ the stages
def train_ae(run: Run) -> dict[str, Any]:
    from vegan.models import build_model
    from vegan.training import train_model

    ds = run.dataset
    model = build_model(run.cfg.ae, ds.shape)
    out = run.dir("ae")
    res = train_model(model, ds.data, run.cfg.ae, CheckpointDir(out, run.cfg.ae.keep_checkpoints), progress=run.progress)
    out.save_torch("model.pt", {"state_dict": res.model.state_dict(), "shape": ds.shape, "config": run.cfg.ae.model_dump()})
    out.write_json("history.json", res.history)
    last = res.history[-1] if res.history else {}
    return {"steps": res.step, "resumed_from": res.resumed_from, "last": last, "n_train": len(ds)}


def extract(run: Run) -> dict[str, Any]:
    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    ds = run.dataset
    model = run.model
    return extract_latents(
        model.encode, ds.data, run.zarr_store("latents"), ds.labels,
        chunk_rows=run.cfg.latents.chunk_rows, batch_size=run.cfg.latents.batch_size, progress=run.progress,
    )


def solve_ot(run: Run) -> dict[str, Any]:
    from vegan.ot import save_result, solve

    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    out = run.dir("ot")
    res = solve(run.codes, config=run.cfg.ot, checkpoints=CheckpointDir(out, keep=3), progress=run.progress)
    save_result(out, res)
    return {
        "converged": bool(res.converged), "iterations": int(res.iterations),
        "marginal_error": {k: float(v) for k, v in res.marginal_error.items()}, "n_codes": int(len(run.codes)),
    }


def generate_codes(run: Run) -> dict[str, Any]:
    import zarr

    from vegan.ot import load_result
    from vegan.ot.generate import generate

    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    g = run.cfg.generate
    res = load_result(run.dir("ot"))
    out = generate(
        run.codes, res, n=g.n_samples, k=g.k, angle_threshold=g.angle_threshold, seed=g.seed,
        centroid_samples=g.centroid_samples, progress=run.progress,
    )
    # mode="w": a half-written store from a crash is replaced; the done marker comes after.
    group = zarr.open_group(run.zarr_store("generate"), mode="w")
    group.create_array("codes", data=np.asarray(out.codes, dtype=np.float32))
    group.create_array("cells", data=np.asarray(out.cells, dtype=np.int64))
    group.attrs.update({"rejection_rate": float(out.rejection_rate), "ot_key": run.keys["ot"]})
    return {"n": int(len(out.codes)), "rejection_rate": float(out.rejection_rate)}


def finetune_gan(run: Run) -> dict[str, Any]:
    from vegan.gan import finetune_decoder

    g = run.cfg.gan
    if not (g.enabled and g.steps > 0) or not run.has_encoder():
        return {"skipped": "GAN fine-tuning disabled" if run.has_encoder() else "no encoder"}
    out = run.dir("gan")
    res = finetune_decoder(
        run.model.decoder, run.dataset.data, torch.from_numpy(run.codes), torch.from_numpy(run.generated_codes),
        g, CheckpointDir(out, g.keep_checkpoints), arch=run.cfg.ae.arch, width=run.cfg.ae.width,
        progress=run.progress,
    )
    out.save_torch("generator.pt", {"state_dict": res.generator.state_dict()})
    out.write_json("history.json", res.history)
    return {"steps": int(res.steps)}


def evaluate(run: Run) -> dict[str, Any]:
    from vegan.evaluation import evaluate_run

    return evaluate_run(run)


STAGE_FUNCS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "ae": train_ae,
    "latents": extract,
    "ot": solve_ot,
    "generate": generate_codes,
    "gan": finetune_gan,
    "eval": evaluate,
}


def run_stage(run: Run, stage: str) -> dict[str, Any]:
    """Run one stage unless its done marker exists; record status in the manifest."""
    if run.manifest.is_done(stage):
        log.info("stage %s (%s) already done: skipped", stage, run.keys[stage])
        return {**run.manifest.done_info(stage), "reused": True}
    for up in STAGES[: STAGES.index(stage)]:
        run.require(up)
    run.manifest.set_status(stage, "running")
    t0 = time.perf_counter()
    try:
        info = STAGE_FUNCS[stage](run)
    except BaseException as exc:
        run.manifest.set_status(stage, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    info = {**info, "seconds": round(time.perf_counter() - t0, 2), "output": run.storage.uri(run.manifest.output(stage))}
    run.manifest.mark_done(stage, info)
    return {**info, "key": run.keys[stage], "reused": False}


def run_pipeline(cfg: PipelineConfig, storage: Storage | str, until: str = "eval", progress: bool = True) -> dict:
    """Run every stage up to ``until`` without Prefect (for notebooks and scripts)."""
    from vegan.manifest import RunLock

    run = Run(cfg, storage, progress=progress)
    run.storage.check_writable()
    with RunLock(run.storage):
        return {stage: run_stage(run, stage) for stage in STAGES[: STAGES.index(until) + 1]}
