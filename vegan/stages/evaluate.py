"""Stage ``eval``: score every sample set against held-out data and write the report.

With a run-wide cluster (``cluster.address``) the sets are made and their features extracted on its
workers, chunk by chunk; the driver gets features back, never the dataset (:mod:`vegan.evaluation`).
"""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def evaluate(run: StageContext) -> dict[str, Any]:
    from vegan.evaluation import evaluate_run

    return evaluate_run(run)


# ``ot`` is listed although ``generate`` already needs it: the report reads the OT history and done info.
STAGE = Stage(
    name="eval",
    run=evaluate,
    output="eval/{key}",
    title="evaluate",
    upstream=("ae", "latents", "ot", "generate", "gan"),
)
