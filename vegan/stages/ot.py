"""Stage ``ot``: solve the semi-discrete OT problem from the source measure to the latent codes.

With a run-wide cluster (``cluster.address``) the workers read the codes from the latent
store themselves: they compute the centring and scale block by block and count cells,
while this process holds O(n) floats (h, weights, solver state) and never the codes.
``ot.mode=auto`` shards the codes across workers when they would not fit one. Without a
cluster the codes are loaded here.
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
    codes = run.codes if run.client is None else run.codes_store
    res = solve(
        codes, config=run.cfg.ot, checkpoints=CheckpointDir(out, keep=3), progress=run.progress, client=run.client
    )
    save_result(out, res)
    return {
        "converged": bool(res.converged),
        "iterations": int(res.iterations),
        "marginal_error": {k: float(v) for k, v in res.marginal_error.items()},
        "n_codes": int(len(res.h)),
        # Where the cells were counted: local, samples (all codes on every worker) or targets
        # (codes sharded across workers), as ot.mode=auto chose it.
        "mode": res.execution.get("mode"),
        "shards": res.execution.get("shards"),
        "workers": res.execution.get("workers"),
    }


STAGE = Stage(
    name="ot",
    run=solve_ot,
    output="ot/{key}",
    title="solve semi-discrete OT",
    upstream=("latents",),
    gpu=True,
    # version 2: the Newton step pools near-tie pairs over iterations (a different trajectory and h).
    # version 3: while averaging, iterates within twice the noise are kept and averaged.
    # version 4: the default first batch is 16 samples per code, not 64 (a different trajectory).
    # version 5: the damping is kept, not doubled, when the batch doubles at the noise floor.
    # version 6: codes of dimension 1 are solved exactly (interval cells, vegan.ot.exact1d).
    # version 7: empty cells jump by their measured deficit (vegan.ot.counting.cell_deficits).
    # version 8: 2-D codes with the cube source are solved on exact cells (vegan.ot.exact2d).
    # version 9: 3-D codes with the cube source are solved on exact cells too (vegan.ot.exact3d).
    # version 10: the hidden samples grow with n (2 per code, vegan.ot.counting.hidden_slices).
    version=10,
)
