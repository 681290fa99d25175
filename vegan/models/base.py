"""The contract every cookbook model answers, so that one trainer runs them all.

A model owns its optimizers and its update rule:

* ``make_optimizers(cfg)`` returns *named* optimizers (``{"model": ...}`` or
  ``{"model": ..., "disc": ...}``); the trainer checkpoints them by name.
* ``train_step(x, optimizers, gen)`` does one training step, which may be
  several optimizer updates (a discriminator update then an autoencoder update;
  ``n_critic`` critic updates then a generator update), and returns detached
  scalar losses by name.

Single-objective models (AE, VAE, WAE-MMD) only write ``losses(x, gen)``; the
default ``train_step`` backpropagates its ``"loss"`` entry through the single
optimizer. Adversarial models (WAE-GAN, AAE, WGAN-GP) override ``train_step``.
The trainer therefore never asks which kind of model it runs: it draws
``batch_size * batch_multiplier`` examples per step (WGAN-GP needs a fresh real
batch per critic update), calls ``train_step``, checks that every loss is finite
and checkpoints ``state_dict()`` plus every optimizer.

All randomness inside a step (reparametrisation noise, prior samples, gradient
penalty interpolation) comes from the generator ``gen`` the trainer passes in
and checkpoints, which is what makes a resumed run identical to an
uninterrupted one.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vegan.config import AEConfig
from vegan.nets import build_decoder, is_image_shape, resolve_arch


class GenerativeModel(nn.Module):
    """Base class: shared nets, sampling helpers and the single-optimizer update."""

    name: ClassVar[str]
    default_reg_weight: ClassVar[float] = 0.0
    """Regulariser weight used when ``AEConfig.reg_weight`` is None."""
    main_loss: ClassVar[str] = "loss"
    """The loss shown on the progress bar and used to judge that training works."""
    has_encoder: ClassVar[bool] = True

    def __init__(self, cfg: AEConfig, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.is_image = is_image_shape(self.shape)
        self.arch = resolve_arch(cfg.arch, self.shape)
        self.latent_dim = cfg.latent_dim
        self.reg_weight = self.default_reg_weight if cfg.reg_weight is None else cfg.reg_weight
        self.recon = self._resolve_recon(cfg.recon)
        self.batch_multiplier = 1

    # ------------------------------------------------------------ building
    def _resolve_recon(self, recon: str) -> str:
        if recon == "auto":
            return "mse"
        if recon == "bce" and not self.is_image:
            raise ValueError("recon='bce' needs image data in [0, 1]; use recon='mse' for vectors")
        return recon

    def _build_decoder(self, width: int) -> nn.Module:
        """The shared decoder; MLP decoders on images get a sigmoid so outputs stay in [0, 1]."""
        decoder = build_decoder(self.shape, self.latent_dim, self.arch, width)
        if self.is_image and self.arch == "mlp":
            decoder = nn.Sequential(decoder, nn.Sigmoid())
        return decoder

    @staticmethod
    def adam(params, cfg: AEConfig, beta2: float = 0.999) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, beta2))

    # ------------------------------------------------------------ public API
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic codes of ``x`` (differentiable; wrap in no_grad for inference)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Data from codes: images in [0, 1] or vectors (differentiable)."""
        return self.decoder(z)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` codes from N(0, I)."""
        return self.noise((n, self.latent_dim), generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples from the model's own sampler: decoded prior codes.

        Runs in eval mode (then restores the mode), so sampling never uses or
        updates batch-norm batch statistics, even in the middle of training.
        """
        was_training = self.training
        self.eval()
        try:
            return self.decode(self.prior_sample(n, generator))
        finally:
            self.train(was_training)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise drawn on the generator's device, returned on the model's."""
        device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=device).to(self.device)

    # ------------------------------------------------------------ training
    def make_optimizers(self, cfg: AEConfig) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.adam(self.parameters(), cfg)}

    def losses(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Single-objective models: losses on a batch, with the objective under ``"loss"``."""
        raise NotImplementedError(f"{type(self).__name__} must implement losses() or train_step()")

    def train_step(
        self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One step; returns detached scalar losses."""
        out = self.losses(x, gen)
        opt = optimizers["model"]
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return {k: v.detach() for k, v in out.items()}

    def after_training(self, data: torch.Tensor, cfg: AEConfig) -> None:
        """Hook run once, in eval mode, before the final checkpoint (the plain AE fits its sampler)."""


def reconstruction_cost(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example cost summed over dimensions, averaged over the batch.

    ``mse`` is the squared error (a Gaussian log-likelihood up to constants),
    ``bce`` the Bernoulli cross-entropy of pixels in [0, 1]. Summing over
    dimensions (not averaging) keeps the scale of the regulariser weights the
    same as in the papers, where the KL / MMD is per example.
    """
    x_hat = x_hat.float()  # under bf16 autocast the decoder's output is bf16; the cost is summed in float32
    if kind == "bce":
        per = F.binary_cross_entropy(x_hat, x, reduction="none")
    else:
        per = (x_hat - x).square()
    return per.flatten(1).sum(1).mean()


def gaussian_posterior(encoder_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an encoder output of size 2d into mean and log-variance (clamped for stability)."""
    mu, logvar = encoder_out.chunk(2, dim=1)
    return mu, logvar.clamp(-10.0, 10.0)


def reparametrize(mu: torch.Tensor, logvar: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy on logits against all-real or all-fake labels.

    Used for the discriminator (prior codes real, encoded codes fake) and, with
    ``real=True`` on encoded codes, as the non-saturating encoder loss
    ``-log D(E(x))`` of WAE-GAN and AAE.
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator | None):
    """WGAN-GP's penalty ``E[(||grad critic(x_hat)|| - 1)^2]`` at ``x_hat = eps real + (1 - eps) fake``,
    one uniform ``eps`` per example drawn from ``gen`` (Gulrajani et al. 2017). Used by the
    WGAN-GP model and by AE-OT-GAN's ``wgan-gp`` loss."""
    eps_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(eps_shape, generator=gen, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def latent_discriminator_step(
    disc: nn.Module, opt: torch.optim.Optimizer, z_prior: torch.Tensor, z_codes: torch.Tensor
) -> torch.Tensor:
    """One update of a latent discriminator: prior codes are real, encoded codes fake."""
    loss = gan_loss(disc(z_prior), True) + gan_loss(disc(z_codes.detach()), False)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()
