"""The AE-OT(-GAN) pipeline flow: the stage DAG of :mod:`vegan.stages.registry`.

Each stage task waits for the states of its upstream stages (``wait_for``), so the
Prefect graph shows the real dependencies (gan <- ae, latents, generate; eval <-
every stage). Tasks run in this (main) thread, one after the other in a
topological order: the trainers' SIGTERM handlers, which checkpoint before a
preempted worker dies, can only live in the main thread.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.states import State

from tasks.stages import STAGE_TASKS
from vegan.cluster import connect
from vegan.config import PipelineConfig
from vegan.manifest import RunLock
from vegan.pipeline import preflight
from vegan.stages.registry import STAGE_NAMES, STAGES, plan

StageName = Literal[STAGE_NAMES]  # a dropdown in the UI form


def run_until(config: PipelineConfig, storage: str, until: str = "eval", progress: bool = True) -> dict[str, Any]:
    """Check the inputs, then run ``until`` and its upstream stages under the run lock.

    A stage whose done marker exists ends as state Reused; one without runs, resuming
    from its own checkpoints in storage. The first failed stage fails the flow. The run's Dask
    cluster (``config.cluster``) is opened once here; each task finds it as the active client.
    """
    store = preflight(config, storage, until)
    states: dict[str, State] = {}
    with RunLock(store), connect(config.cluster):
        for name in plan(until):
            upstream = [states[up] for up in STAGES[name].upstream]
            states[name] = STAGE_TASKS[name](name, config, store.url, progress, wait_for=upstream, return_state=True)
            states[name].result()  # raises the stage's error: nothing downstream starts
    return {name: state.result() for name, state in states.items()}


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
        get_run_logger().info("report: %s/report.md", results["eval"].get("output"))
    return results
