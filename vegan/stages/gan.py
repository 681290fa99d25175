"""Stage ``gan``: AE-OT-GAN fine-tuning of the decoder on real and generated codes."""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def finetune_gan(run: StageContext) -> dict[str, Any]:
    import torch

    from vegan.checkpoint import CheckpointDir
    from vegan.gan import finetune_decoder

    g = run.cfg.gan
    if not (g.enabled and g.steps > 0) or not run.has_encoder():
        return {"skipped": "GAN fine-tuning disabled" if run.has_encoder() else "no encoder"}
    out = run.dir("gan")
    res = finetune_decoder(
        run.model.decoder,
        run.dataset,
        torch.from_numpy(run.codes),
        torch.from_numpy(run.generated_codes),
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
    version=2,  # version 2: real images stream from dataset chunks, a different batch order than version 1's
)
