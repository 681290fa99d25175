"""AE-OT-GAN: adversarial fine-tuning of the autoencoder's decoder.

AE-OT generates codes inside the support of the latent distribution, but an
autoencoder decoder trained with a pixel loss draws blurry images, and codes
mixed between training codes fall where it was never trained. AE-OT-GAN fixes
both by fine-tuning the decoder as a GAN generator:

* the generator starts from the trained decoder, so it already maps codes to the
  right images and the GAN only has to sharpen them (no mode collapse: the codes
  come from OT, not from a noise prior the generator could ignore);
* paired codes ``y_i`` (encodings of training images ``x_i``) get a content loss,
  pixel L1 plus matching of the discriminator's features, which anchors
  ``G(y_i)`` to ``x_i``;
* the codes from the generation stage, which have no image, get the adversarial
  loss only; together with the paired codes they show the discriminator what the
  generator does everywhere on the latent support.

Fine-tuning is one :class:`~vegan.training.TrainJob` run by the shared loop
:func:`vegan.training.run_loop` (resume, SIGTERM, finite-loss check, history,
checkpoint cadence live there): this module only says what one step does and
what a checkpoint holds (the generator, its EMA, the discriminator and both
optimizers). Real images stream from the dataset's chunks
(:func:`vegan.data.stream.batch_source`), so a lazy Zarr dataset larger than
memory works. Every batch is a pure function of ``(seed, step)`` and the
gradient penalty's noise comes from the loop's checkpointed generator, so a
resumed run is identical to an uninterrupted one (bitwise on CPU).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vegan.checkpoint import CheckpointDir
from vegan.config import GANConfig
from vegan.data.base import ChunkedRows, Dataset
from vegan.data.stream import batch_source
from vegan.device import resolve_device
from vegan.models.base import gradient_penalty
from vegan.nets import Discriminator
from vegan.training import BatchIndices, TrainJob, check_batch, mix_seeds, run_loop


@dataclass
class GANResult:
    generator: nn.Module  # the EMA generator, eval mode, on CPU
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    resumed_from: int | None = None


# ------------------------------------------------------------------ inputs
def _as_float_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().float()
    else:
        try:
            t = torch.from_numpy(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a numeric array or tensor: {exc}") from exc
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_inputs(
    decoder: nn.Module, images: Any, paired_codes: Any, generated_codes: Any
) -> tuple[ChunkedRows, torch.Tensor, torch.Tensor]:
    """Images as chunked rows (a lazy dataset stays lazy: its shape and length are metadata, its
    finiteness is checked batch by batch); codes as float tensors."""
    if not isinstance(images, ChunkedRows):
        images = Dataset("images", _as_float_tensor(images, "images"), None)
    paired = _as_float_tensor(paired_codes, "paired_codes")
    if paired.ndim != 2 or len(paired) == 0:
        raise ValueError(f"paired_codes must be a non-empty (n, latent_dim) array, got shape {tuple(paired.shape)}")
    if len(images) != len(paired):
        raise ValueError(
            f"images and paired_codes must pair up one to one: {len(images)} images but {len(paired)} codes"
        )
    d = paired.shape[1]
    if generated_codes is None:
        generated = paired.new_zeros((0, d))
    else:
        generated = _as_float_tensor(generated_codes, "generated_codes")
        if generated.ndim != 2 or (len(generated) and generated.shape[1] != d):
            raise ValueError(
                f"generated_codes must have shape (m, {d}) like paired_codes, got {tuple(generated.shape)}"
            )
    probe = copy.deepcopy(decoder).cpu().eval()
    try:
        with torch.no_grad():
            out = probe(paired[:2])
    except RuntimeError as exc:
        raise ValueError(f"codes have dimension {d}, which the decoder does not accept: {exc}") from exc
    if tuple(out.shape[1:]) != tuple(images.shape):
        raise ValueError(
            f"the decoder makes examples of shape {tuple(out.shape[1:])} but images have shape {tuple(images.shape)}"
        )
    return images, paired, generated


# ------------------------------------------------------------------ losses
def _d_loss(cfg: GANConfig, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator):
    d_real, d_fake = disc(real), disc(fake)
    if cfg.loss == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean(), {}
    gp = gradient_penalty(disc, real, fake[: len(real)], gen)
    return d_fake.mean() - d_real.mean() + cfg.gp_weight * gp, {"gp": gp}


def _update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """EMA with warm-up: early on the average follows the model closely, otherwise a
    short fine-tuning run would return (mostly) the untouched decoder."""
    beta = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - beta)
        for be, b in zip(ema.buffers(), model.buffers()):
            be.copy_(b)


# --------------------------------------------------------------------- the job
def finetune_decoder(
    decoder: nn.Module,
    images: Any,
    paired_codes: Any,
    generated_codes: Any,
    cfg: GANConfig,
    checkpoints: CheckpointDir | None = None,
    arch: str = "auto",
    width: int = 64,
    progress: bool = True,
    log_every: int = 10,
) -> GANResult:
    """Fine-tune a copy of ``decoder`` as the AE-OT-GAN generator; ``decoder`` is not modified.

    ``images[i]`` is the example ``paired_codes[i]`` was encoded from (a float tensor, or a dataset:
    an in-memory ``Dataset`` or a lazy ``ZarrDataset``, streamed by chunks);
    ``generated_codes`` (may be ``None``) come from :func:`vegan.ot.generate.generate`.
    The discriminator is ``vegan.nets.Discriminator(shape, arch, width)``.
    Resumes from the newest loadable checkpoint in ``checkpoints``. Returns the
    EMA generator on CPU in eval mode; with ``cfg.steps == 0`` or
    ``cfg.enabled`` false, a copy of the decoder. Raises ``ValueError`` on
    inconsistent inputs, :class:`~vegan.training.TrainingError` on a non-finite
    loss, :class:`~vegan.training.TrainingInterrupted` after checkpointing on SIGTERM.
    """
    if not cfg.enabled or cfg.steps == 0:
        return GANResult(copy.deepcopy(decoder).cpu().eval(), [], 0)
    images, paired, generated = _check_inputs(decoder, images, paired_codes, generated_codes)
    device = resolve_device(cfg.device)
    shape = tuple(images.shape)

    gen_net = copy.deepcopy(decoder).to(device).train()
    ema = copy.deepcopy(gen_net).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # a deterministic critic without touching the global RNG
        torch.manual_seed(mix_seeds(cfg.seed, 1))
        disc = Discriminator(shape, arch, width, spectral_norm=cfg.spectral_norm).to(device).train()
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))

    b, pin = cfg.batch_size, device.type == "cuda"
    # Images stream from their chunks; the paired codes of a batch are picked by the same row indices.
    pairs = batch_source(images, b, cfg.seed, pin_memory=pin)
    reals = batch_source(images, b, mix_seeds(cfg.seed, 2), pin_memory=pin)
    extra = BatchIndices(len(generated), b, mix_seeds(cfg.seed, 3)) if len(generated) else None

    def step(s: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(pairs.indices(s))
        x_p = check_batch(pairs.batch(s), s, "images").to(device)
        y_p = paired[idx].to(device)
        real = check_batch(reals.batch(s), s, "images").to(device)
        codes = y_p if extra is None else torch.cat([y_p, generated[extra(s)].to(device)])
        fake = gen_net(codes)

        d_loss, d_extra = _d_loss(cfg, disc, real, fake.detach(), gen)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        disc.requires_grad_(False)
        g_adv = -disc(fake).mean()
        pixel = (fake[: len(idx)] - x_p).abs().mean()
        with torch.no_grad():
            real_features = disc.features(x_p)
        feature = (disc.features(fake[: len(idx)]) - real_features).abs().mean()
        content = pixel + cfg.feature_weight * feature
        g_loss = g_adv + cfg.content_weight * content
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        disc.requires_grad_(True)
        _update_ema(ema, gen_net, cfg.ema, s)
        return {"d_loss": d_loss, "g_adv": g_adv, "content": content, "pixel": pixel, "feature": feature, **d_extra}

    job = TrainJob(
        name="AE-OT-GAN", step=step,
        state={"generator": gen_net, "ema": ema, "discriminator": disc, "opt_g": opt_g, "opt_d": opt_d},
        meta={"shape": list(shape), "latent_dim": paired.shape[1], "arch": arch, "width": width,
              "loss": cfg.loss, "spectral_norm": cfg.spectral_norm},
        steps=cfg.steps, seed=cfg.seed, device=device, checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints, main_loss="content", hint="Lower cfg.lr_g / cfg.lr_d.",
    )  # fmt: skip
    with pairs, reals:
        res = run_loop(job, checkpoints, progress, log_every)
    return GANResult(ema.cpu().eval(), res.history, res.step, res.resumed_from)
