"""One Prefect task per registered stage: retries, logging, artifacts (progress, metrics), the Reused state.

Whether a stage is finished is decided by its done marker in storage and nothing
else (no Prefect result cache): a stage whose marker exists ends in a Completed
state named ``Reused`` without running, so the UI shows it apart from work done
in this flow run. Retries are for failures (a preempted worker, a flaky bucket),
never for a shutdown: an interrupted stage stops the flow, and a rerun resumes it.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, State

from tasks.progress import progress_artifacts
from vegan.cluster import active_client
from vegan.config import PipelineConfig
from vegan.pipeline import is_interruption, run_stage
from vegan.stages.context import Run
from vegan.stages.registry import STAGES


def retry_on_failure_only(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect retry condition: retry errors, not interruptions (SIGTERM, Ctrl-C)."""
    return not (isinstance(state.data, BaseException) and is_interruption(state.data))


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_on_failure_only, cache_policy=NO_CACHE)
def stage_task(stage: str, config: PipelineConfig, storage: str, progress: bool = True) -> Any:
    """Run ``stage`` (resuming from its checkpoints), or return its recorded info as state Reused."""
    logger = get_run_logger()
    run = Run(config, storage, progress=progress, client=active_client())  # the flow's one client, if any
    if run.manifest.is_done(stage):
        marker = run.storage.uri(run.manifest.done_marker(stage))
        logger.info("%s is done (%s): reused", stage, marker)
        return Completed(name="Reused", message=f"done marker {marker}", data=run_stage(run, stage))
    logger.info("%s -> %s", run.keys[stage], run.storage.uri(run.manifest.output(stage)))
    with progress_artifacts(stage):
        info = run_stage(run, stage)
    logger.info("%s finished: %s", stage, {k: v for k, v in info.items() if k != "metrics"})
    if "metrics" in info:
        from vegan.report import metrics_markdown

        create_markdown_artifact(
            key=re.sub(r"[^a-z0-9-]+", "-", f"vegan-{stage}-{config.name}".lower())[:60],
            markdown=f"# {config.name}: evaluation\n\n{metrics_markdown(info['metrics'])}\n\n"
            f"Report: `{info['output']}/report.md`\n",
            description=f"AE-OT evaluation of {config.name}",
        )
    return info


STAGE_TASKS: dict[str, Task] = {
    name: stage_task.with_options(name=f"stage-{name}", task_run_name=f"{name}: {stage.title}")
    for name, stage in STAGES.items()
}
