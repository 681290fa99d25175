"""Stage ``ot``: solve the semi-discrete OT problem from the source measure to the latent codes.

With a run-wide cluster (``cluster.address``) the Monte Carlo counting runs on its workers.
"""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def solve_ot(run: StageContext) -> dict[str, Any]:
    from vegan.checkpoint import CheckpointDir
    from vegan.ot import save_result, solve

    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    out = run.dir("ot")
    res = solve(
        run.codes, config=run.cfg.ot, checkpoints=CheckpointDir(out, keep=3), progress=run.progress, client=run.client
    )
    save_result(out, res)
    return {
        "converged": bool(res.converged),
        "iterations": int(res.iterations),
        "marginal_error": {k: float(v) for k, v in res.marginal_error.items()},
        "n_codes": int(len(run.codes)),
    }


STAGE = Stage(
    name="ot", run=solve_ot, output="ot/{key}", title="solve semi-discrete OT", upstream=("latents",), gpu=True
)
