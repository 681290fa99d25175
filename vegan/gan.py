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
memory works; the codes stream the same way (from the latents and generate
stages' Zarr stores in the pipeline): the paired codes through a stream with the
images' chunk layout and seed, so its batch ``s`` holds the codes of exactly the
images of batch ``s``. Memory is a few chunks of each, whatever N. Every batch is
a pure function of ``(seed, step)`` and the gradient penalty's noise comes from
the loop's checkpointed generator, so a resumed run is identical to an
uninterrupted one (bitwise on CPU).
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
from vegan.training import TrainJob, autocast, check_batch, mix_seeds, run_loop


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


class _Rechunked(ChunkedRows):
    """The rows of ``src`` cut into chunks of ``chunk_rows`` (reads may span ``src``'s own chunks): codes
    stored in chunks of their own size, streamed in the image dataset's chunk layout."""

    def __init__(self, src: ChunkedRows, chunk_rows: int):
        self.src, self.chunk_rows = src, int(chunk_rows)

    def __len__(self) -> int:
        return len(self.src)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.src.shape)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return self.src.rows(lo, hi)

    def label_rows(self, lo: int, hi: int) -> None:
        return None


def _code_rows(codes: Any, name: str, chunk_rows: int) -> ChunkedRows:
    """Codes as chunked rows in chunks of ``chunk_rows``: an array or tensor is checked whole (it is in
    memory anyway); stored codes (``ChunkedRows``) are checked batch by batch as they stream."""
    if isinstance(codes, ChunkedRows):
        return _Rechunked(codes, chunk_rows)
    t = _as_float_tensor(codes, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (n, latent_dim), got {tuple(t.shape)}")
    return Dataset(name, t, None, chunk_rows=chunk_rows)


def _check_inputs(
    decoder: nn.Module, images: Any, paired_codes: Any, generated_codes: Any
) -> tuple[ChunkedRows, ChunkedRows, ChunkedRows | None]:
    """Images and codes as chunked rows (a lazy dataset or code store stays lazy: shapes and lengths are
    metadata, finiteness is checked batch by batch)."""
    if not isinstance(images, ChunkedRows):
        images = Dataset("images", _as_float_tensor(images, "images"), None)
    paired = _code_rows(paired_codes, "paired_codes", images.chunk_rows)
    if len(paired) == 0 or len(paired.shape) != 1:
        raise ValueError(f"paired_codes must be a non-empty (n, latent_dim) array, got {len(paired)} rows")
    if len(images) != len(paired):
        raise ValueError(
            f"images and paired_codes must pair up one to one: {len(images)} images but {len(paired)} codes"
        )
    d = paired.shape[0]
    generated = None
    if generated_codes is not None:
        generated = _code_rows(generated_codes, "generated_codes", images.chunk_rows)
        if len(generated) and tuple(generated.shape) != (d,):
            raise ValueError(
                f"generated_codes must have shape (m, {d}) like paired_codes, got (m, {generated.shape[0]})"
            )
        generated = generated if len(generated) else None
    probe = copy.deepcopy(decoder).cpu().eval()
    try:
        with torch.no_grad():
            out = probe(paired.float_rows(0, 2))
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
    ``generated_codes`` (may be ``None``) come from :func:`vegan.ot.generate.generate`. Both kinds
    of codes are arrays or chunked rows (``ZarrCodes`` of a stage's store), streamed by chunks.
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
    # Images and their codes stream in the same chunk layout with the same seed: equal row indices per step.
    pairs = batch_source(images, b, cfg.seed, pin_memory=pin)
    pair_codes = batch_source(paired, b, cfg.seed)
    reals = batch_source(images, b, mix_seeds(cfg.seed, 2), pin_memory=pin)
    extra = None if generated is None else batch_source(generated, b, mix_seeds(cfg.seed, 3))

    def step(s: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        with autocast(device, cfg.precision):
            return _step(s, gen)

    def _step(s: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x_p = check_batch(pairs.batch(s), s, "images").to(device)
        y_p = check_batch(pair_codes.batch(s), s, "paired codes").to(device)
        real = check_batch(reals.batch(s), s, "images").to(device)
        codes = y_p if extra is None else torch.cat([y_p, check_batch(extra.batch(s), s, "generated codes").to(device)])
        fake = gen_net(codes).float()

        d_loss, d_extra = _d_loss(cfg, disc, real, fake.detach(), gen)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        disc.requires_grad_(False)
        g_adv = -disc(fake).mean()
        pixel = (fake[: len(y_p)] - x_p).abs().mean()
        with torch.no_grad():
            real_features = disc.features(x_p)
        feature = (disc.features(fake[: len(y_p)]) - real_features).abs().mean()
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
        meta={"shape": list(shape), "latent_dim": paired.shape[0], "arch": arch, "width": width,
              "loss": cfg.loss, "spectral_norm": cfg.spectral_norm},
        steps=cfg.steps, seed=cfg.seed, device=device, checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints, main_loss="content", hint="Lower cfg.lr_g / cfg.lr_d.",
    )  # fmt: skip
    with pairs, pair_codes, reals:
        try:
            res = run_loop(job, checkpoints, progress, log_every)
        finally:
            if extra is not None:
                extra.close()
    return GANResult(ema.cpu().eval(), res.history, res.step, res.resumed_from)
