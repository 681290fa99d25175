"""The library's progress (:mod:`vegan.progress`) as Prefect progress artifacts of the running task.

Each loop of a stage (training steps, OT iterations, latent chunks, generated samples) becomes one
progress artifact of the task run, created at the loop's start and updated at each tenth (or
minute) and at its end, with the rate and ETA in its description: the Prefect UI shows a stage's
progress without anyone reading a console.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from vegan.progress import ProgressEvent, listen


class ProgressArtifacts:
    """A :func:`vegan.progress.listen` callback: one progress artifact per loop, keyed by its ``desc``
    (a loop that runs again in the same task, e.g. after a retry, updates its artifact)."""

    def __init__(self, stage: str):
        self.stage = stage
        self.ids: dict[str, UUID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        description = f"{self.stage}: {event.line()}"
        percent = 100.0 if event.phase == "end" else event.percent  # an OT solve ends when it converges
        artifact = self.ids.get(event.desc)
        if artifact is None:
            self.ids[event.desc] = create_progress_artifact(percent, description=description)
        else:
            update_progress_artifact(artifact, percent, description=description)


@contextmanager
def progress_artifacts(stage: str) -> Iterator[ProgressArtifacts]:
    """While the block runs, every loop of the library reports to a progress artifact of this task run."""
    with listen(ProgressArtifacts(stage)) as callback:
        yield callback
