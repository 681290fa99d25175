"""One flow per registered stage, for deployments that run (or rerun) the DAG up to that stage.

Each runs the stage's upstream stages first; finished ones are reused, so
triggering ``stage-ot`` on a run whose autoencoder is trained only solves OT.
The flows are made from the registry: ``flows.stages.ae_stage``, ``ot_stage``, ...
are module attributes, which is what module-path (``flows.stages.ae_stage``) and
file-path (``flows/stages.py:ae_stage``) entrypoints look up; ``flows.deploy``
gives deployments those entrypoints explicitly.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow

from flows.pipeline import run_until
from vegan.config import PipelineConfig
from vegan.stages.base import Stage
from vegan.stages.registry import STAGES


def flow_attr(stage: str) -> str:
    """Module attribute (and entrypoint name) of a stage's flow."""
    return f"{stage}_stage"


def _stage_flow(stage: Stage) -> Flow:
    def run_stage_flow(config: PipelineConfig = PipelineConfig(), storage: str = "./runs/default") -> dict[str, Any]:
        return run_until(config, storage, stage.name)

    description = f"{stage.title[0].upper()}{stage.title[1:]}, after any unfinished upstream stage."
    return flow(name=f"stage-{stage.name}", description=description)(run_stage_flow)


STAGE_FLOWS: dict[str, Flow] = {name: _stage_flow(stage) for name, stage in STAGES.items()}
globals().update({flow_attr(name): stage_flow for name, stage_flow in STAGE_FLOWS.items()})
