"""One Prefect task per pipeline stage: caching, retries, logging, artifacts.

The cache key is the stage key (a hash of the stage's config and its upstream
keys) plus the run's storage URL and the library version, so rerunning a flow
with the same parameters reuses every finished stage across flow runs. The flow
passes ``refresh_cache=True`` when a stage's done marker is missing from storage,
so deleting outputs can never be masked by a stale Prefect cache entry.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import vegan
from vegan.config import STAGES, PipelineConfig, stage_key
from vegan.pipeline import Run, run_stage

TITLES = {
    "ae": "train autoencoder",
    "latents": "extract latents",
    "ot": "solve semi-discrete OT",
    "generate": "generate latent codes",
    "gan": "fine-tune decoder (AE-OT-GAN)",
    "eval": "evaluate",
}


def stage_cache_key(stage: str, config: PipelineConfig, storage: str) -> str:
    return f"vegan-{vegan.__version__}-{stage_key(config, stage)}-{storage}"


def _make_stage_task(stage: str):
    def cache_key(context: Any, parameters: dict[str, Any]) -> str:
        return stage_cache_key(stage, parameters["config"], parameters["storage"])

    @task(
        name=f"stage-{stage}",
        task_run_name=f"{stage}: {TITLES[stage]}",
        cache_key_fn=cache_key,
        persist_result=True,
        retries=1,
        retry_delay_seconds=5,
    )
    def stage_task(config: PipelineConfig, storage: str, progress: bool = True) -> dict[str, Any]:
        logger = get_run_logger()
        run = Run(config, storage, progress=progress)
        logger.info("%s -> %s", run.keys[stage], run.storage.uri(run.manifest.output(stage)))
        info = run_stage(run, stage)
        shown = {k: v for k, v in info.items() if k != "metrics"}
        logger.info("%s finished: %s", stage, shown)
        if stage == "eval":
            from vegan.report import metrics_markdown

            create_markdown_artifact(
                key=re.sub(r"[^a-z0-9-]+", "-", f"vegan-eval-{config.name}".lower())[:60],
                markdown=f"# {config.name}: evaluation\n\n{metrics_markdown(info['metrics'])}\n\n"
                f"Report: `{info['output']}/report.md`\n",
                description=f"AE-OT evaluation of {config.name}",
            )
        return info

    return stage_task


STAGE_TASKS = {stage: _make_stage_task(stage) for stage in STAGES}
