"""One flow per stage, for deployments that run (or rerun) the DAG up to that stage.

Each runs its upstream stages first; finished ones are skipped, so triggering
``stage-ot`` on a run whose autoencoder is trained only solves OT.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow

from flows.pipeline import run_until
from vegan.config import PipelineConfig


def _stage_flow(stage: str, description: str) -> Flow:
    def stage_flow(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
        return run_until(config, storage, stage)

    # Module-path entrypoints (``flows.stages.ae_stage``) are derived from the function name.
    stage_flow.__name__ = stage_flow.__qualname__ = f"{stage}_stage"
    return flow(name=f"stage-{stage}", description=description)(stage_flow)


# Module-level names: deployments use them as entrypoints (flows/stages.py:ae_stage ...).
ae_stage = _stage_flow("ae", "Train (or resume training) the autoencoder.")
latents_stage = _stage_flow("latents", "Encode the dataset into a Zarr array of codes.")
ot_stage = _stage_flow("ot", "Solve the semi-discrete OT problem to the codes.")
generate_stage = _stage_flow("generate", "Generate latent codes with the piecewise-linear extension.")
gan_stage = _stage_flow("gan", "Fine-tune the decoder adversarially (AE-OT-GAN).")
eval_stage = _stage_flow("eval", "Evaluate the run and write its report.")
