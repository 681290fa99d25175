"""Stage ``latents``: encode the dataset into a Zarr array of codes, chunk by chunk.

With the run's Dask client each chunk is a task: the worker loads the encoder
from the ae stage's ``model.pt`` (:class:`~vegan.latents.EncoderRef`), reads its
rows from the dataset store and writes its codes straight into the latent
store, so the driver holds neither images nor codes. Without one, the chunks
run in this process with the model already loaded.
"""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def extract(run: StageContext) -> dict[str, Any]:
    from vegan.latents import EncoderRef, extract_latents

    if not run.has_encoder():
        return {"skipped": f"model {run.cfg.ae.model} has no encoder"}
    opts = run.storage.storage_options
    if run.client is not None:
        run.require("ae")
        encoder = EncoderRef(run.dir("ae").uri("model.pt"), storage_options=opts)
    else:
        encoder = run.model.encode
    return extract_latents(
        encoder,
        run.dataset,
        run.dir("latents").url,
        chunk_rows=run.cfg.latents.chunk_rows,
        batch_size=run.cfg.latents.batch_size,
        progress=run.progress,
        client=run.client,
        resources=run.resources("latents"),
        storage_options=opts,
    )


STAGE = Stage(name="latents", run=extract, output="latents/{key}.zarr", title="extract latents", upstream=("ae",))
