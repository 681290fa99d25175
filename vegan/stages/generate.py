"""Stage ``generate``: sample latent codes with the OT map's piecewise-linear extension.

Writes ``codes`` and ``cells`` to the output Zarr chunk by chunk (each chunk's completion
marker after its rows; a rerun writes only missing chunks). With a run-wide cluster
(``cluster.address``) workers read the codes from the latent store themselves (all of
them, or a shard each when they would not fit a worker), fetch candidate codes by index
and write the output chunks: this process holds per-block sample counts, never codes.
Results are the same with and without a cluster, up to float rounding.
"""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def generate_codes(run: StageContext) -> dict[str, Any]:
    from vegan.ot import load_result
    from vegan.ot.generate import generate_to_zarr

    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    g = run.cfg.generate
    res = load_result(run.dir("ot"))
    out = run.dir("generate")
    info = generate_to_zarr(
        run.codes if run.client is None else run.codes_store,
        res,
        out.url,
        n=g.n_samples,
        k=g.k,
        angle_threshold=g.angle_threshold,
        seed=g.seed,
        centroid_samples=g.centroid_samples,
        client=run.client,
        resources=run.resources("generate"),
        storage_options=out.storage_options,
        progress=run.progress,
        attrs={"ot_key": run.keys["ot"]},
    )
    return {"n": int(info["n"]), "rejection_rate": float(info["rejection_rate"]), "chunks": int(info["chunks"])}


STAGE = Stage(
    name="generate",
    run=generate_codes,
    output="samples/{key}.zarr",
    title="generate latent codes",
    upstream=("ot", "latents"),
    version=2,  # version 2: written chunk by chunk with completion markers (generate_to_zarr)
)
