"""Adversarial autoencoder (Makhzani et al. 2016), Gaussian-posterior variant.

Each step runs the paper's two phases:

1. *reconstruction*: encoder and decoder minimise the reconstruction cost of a
   code drawn from the Gaussian posterior ``q(z|x)`` (reparametrised);
2. *regularisation*: the latent discriminator learns prior codes (real) against
   posterior codes (fake), then the encoder alone minimises ``reg_weight *
   (-log D(z))`` (non-saturating), with its own optimizer.

Compared with WAE-GAN (deterministic encoder, one joint objective), the AAE
keeps a stochastic encoder and updates the phases separately: in the cookbook
it is the POT objective with a Jensen-Shannon latent penalty. Reconstruction is
``recon`` (mse by default; ``recon="bce"`` is the paper's choice on MNIST). The
paper's Adam settings are close to ``AEConfig(beta1=0.5)``.
"""

from __future__ import annotations

import torch

from vegan.config import AEConfig
from vegan.models.base import (
    GenerativeModel,
    gan_loss,
    gaussian_posterior,
    latent_discriminator_step,
    reconstruction_cost,
    reparametrize,
)
from vegan.nets import build_encoder, build_latent_discriminator


class AAE(GenerativeModel):
    name = "aae"
    default_reg_weight = 1.0
    main_loss = "recon"  # the adversarial terms oscillate by design

    def __init__(self, cfg: AEConfig, shape: tuple[int, ...]):
        super().__init__(cfg, shape)
        self.encoder = build_encoder(self.shape, 2 * self.latent_dim, self.arch, cfg.width)
        self.decoder = self._build_decoder(cfg.width)
        self.latent_disc = build_latent_discriminator(self.latent_dim, cfg.width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean."""
        return gaussian_posterior(self.encoder(x))[0]

    def make_optimizers(self, cfg: AEConfig) -> dict[str, torch.optim.Optimizer]:
        return {
            "model": self.adam([*self.encoder.parameters(), *self.decoder.parameters()], cfg),
            "disc": self.adam(self.latent_disc.parameters(), cfg),
            "encoder": self.adam(self.encoder.parameters(), cfg),
        }

    def _posterior_sample(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return reparametrize(*gaussian_posterior(self.encoder(x)), gen)

    def train_step(self, x, optimizers, gen) -> dict[str, torch.Tensor]:
        # Phase 1: reconstruction.
        recon = reconstruction_cost(self.decoder(self._posterior_sample(x, gen)), x, self.recon)
        opt = optimizers["model"]
        opt.zero_grad(set_to_none=True)
        recon.backward()
        opt.step()
        # Phase 2: regularisation (discriminator, then encoder as its generator).
        z = self._posterior_sample(x, gen)
        disc = latent_discriminator_step(self.latent_disc, optimizers["disc"], self.noise(z.shape, gen), z)
        adv = gan_loss(self.latent_disc(z), True)
        opt = optimizers["encoder"]
        opt.zero_grad(set_to_none=True)
        (self.reg_weight * adv).backward()
        opt.step()
        return {
            "loss": recon.detach() + self.reg_weight * adv.detach(),
            "recon": recon.detach(),
            "adv": adv.detach(),
            "disc": disc,
        }
