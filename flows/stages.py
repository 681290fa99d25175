"""One flow per stage, for deployments that run (or rerun) the DAG up to that stage.

Each runs its upstream stages first; finished ones are skipped, so triggering
``stage-ot`` on a run whose autoencoder is trained only solves OT.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import run_until
from vegan.config import PipelineConfig


@flow(name="stage-ae")
def ae_stage(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
    """Train (or resume training) the autoencoder."""
    return run_until(config, storage, "ae")


@flow(name="stage-latents")
def latents_stage(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
    """Encode the dataset into a Zarr array of codes."""
    return run_until(config, storage, "latents")


@flow(name="stage-ot")
def ot_stage(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
    """Solve the semi-discrete OT problem to the codes."""
    return run_until(config, storage, "ot")


@flow(name="stage-generate")
def generate_stage(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
    """Generate latent codes with the piecewise-linear extension."""
    return run_until(config, storage, "generate")


@flow(name="stage-gan")
def gan_stage(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
    """Fine-tune the decoder adversarially (AE-OT-GAN)."""
    return run_until(config, storage, "gan")


@flow(name="stage-eval")
def eval_stage(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
    """Evaluate the run and write its report."""
    return run_until(config, storage, "eval")
