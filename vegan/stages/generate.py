"""Stage ``generate``: sample latent codes with the OT map's piecewise-linear extension.

With a run-wide cluster (``cluster.address``) centroids and samples are computed on its workers
(results are identical with and without it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vegan.stages.base import Stage, StageContext


def generate_codes(run: StageContext) -> dict[str, Any]:
    import zarr

    from vegan.ot import load_result
    from vegan.ot.generate import generate

    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    g = run.cfg.generate
    res = load_result(run.dir("ot"))
    out = generate(
        run.codes,
        res,
        n=g.n_samples,
        k=g.k,
        angle_threshold=g.angle_threshold,
        seed=g.seed,
        centroid_samples=g.centroid_samples,
        client=run.client,
        progress=run.progress,
    )
    # mode="w": a half-written store from a crash is replaced; the done marker comes after.
    group = zarr.open_group(run.zarr_store("generate"), mode="w")
    group.create_array("codes", data=np.asarray(out.codes, dtype=np.float32))
    group.create_array("cells", data=np.asarray(out.cells, dtype=np.int64))
    group.attrs.update({"rejection_rate": float(out.rejection_rate), "ot_key": run.keys["ot"]})
    return {"n": int(len(out.codes)), "rejection_rate": float(out.rejection_rate)}


STAGE = Stage(
    name="generate",
    run=generate_codes,
    output="samples/{key}.zarr",
    title="generate latent codes",
    upstream=("ot", "latents"),
)
