"""Stage ``latents``: encode the dataset into a Zarr array of codes, chunk by chunk."""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def extract(run: StageContext) -> dict[str, Any]:
    from vegan.latents import extract_latents

    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    ds = run.dataset
    model = run.model
    return extract_latents(
        model.encode,
        ds.data,
        run.zarr_store("latents"),
        ds.labels,
        chunk_rows=run.cfg.latents.chunk_rows,
        batch_size=run.cfg.latents.batch_size,
        progress=run.progress,
    )


STAGE = Stage(name="latents", run=extract, output="latents/{key}.zarr", title="extract latents", upstream=("ae",))
