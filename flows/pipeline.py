"""The AE-OT(-GAN) pipeline flow: train AE -> latents -> OT -> generate -> GAN -> eval."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger

from tasks.stages import STAGE_TASKS
from vegan.config import STAGES, PipelineConfig
from vegan.manifest import Manifest, RunLock
from vegan.storage import Storage

StageName = Literal["ae", "latents", "ot", "generate", "gan", "eval"]


def run_until(config: PipelineConfig, storage: str, until: str = "eval", progress: bool = True) -> dict[str, Any]:
    """Run the stage tasks in order up to ``until`` under the run lock.

    A stage whose done marker exists is looked up in the Prefect cache (state
    Cached); one without is forced to run (``refresh_cache``), and resumes from
    its own checkpoints in storage.
    """
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    store = Storage(storage)
    store.check_writable()
    manifest = Manifest(store, config)
    results: dict[str, Any] = {}
    with RunLock(store):
        for stage in STAGES[: STAGES.index(until) + 1]:
            task = STAGE_TASKS[stage].with_options(refresh_cache=not manifest.is_done(stage))
            results[stage] = task(config, store.url, progress)
    return results


@flow(name="aeot-pipeline", log_prints=True)
def aeot_pipeline(
    config: PipelineConfig = PipelineConfig(),
    storage: str = "./runs/default",
    until: StageName = "eval",
    progress: bool = True,
) -> dict[str, Any]:
    """Train an autoencoder, solve semi-discrete OT in its latent space, generate, fine-tune, evaluate.

    Rerunning with the same parameters skips finished stages and resumes the
    interrupted one from its last checkpoint.
    """
    results = run_until(config, storage, until, progress)
    if "eval" in results:
        get_run_logger().info("report: %s", results["eval"].get("report"))
    return results
