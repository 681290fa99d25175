"""Stage ``gan``: AE-OT-GAN fine-tuning of the decoder on real and generated codes.

Images stream from the dataset's chunks and codes from the latents and generate stages' Zarr
stores (:class:`~vegan.metrics.sources.ZarrCodes`), so nothing O(N) is held in memory.
"""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def finetune_gan(run: StageContext) -> dict[str, Any]:
    from vegan.checkpoint import CheckpointDir
    from vegan.evaluation import stage_codes
    from vegan.gan import finetune_decoder

    g = run.cfg.gan
    if not (g.enabled and g.steps > 0) or not run.has_encoder():
        return {"skipped": "GAN fine-tuning disabled" if run.has_encoder() else "no encoder"}
    out = run.dir("gan")
    res = finetune_decoder(
        run.model.decoder,
        run.dataset,
        stage_codes(run, "latents"),
        stage_codes(run, "generate"),
        g,
        CheckpointDir(out, g.keep_checkpoints),
        arch=run.cfg.ae.arch,
        width=run.cfg.ae.width,
        progress=run.progress,
    )
    out.save_torch("generator.pt", {"state_dict": res.generator.state_dict()})
    out.write_json("history.json", res.history)
    return {"steps": int(res.steps)}


STAGE = Stage(
    name="gan",
    run=finetune_gan,
    output="gan/{key}",
    title="fine-tune decoder (AE-OT-GAN)",
    upstream=("ae", "latents", "generate"),
    gpu=True,
    # version 2: real images stream from dataset chunks; version 3: generated codes stream by chunk too
    # (a different order of generated codes than version 2's per-epoch permutation).
    version=3,
)
