"""Wasserstein autoencoder with a latent GAN penalty (Tolstikhin et al. 2018, WAE-GAN).

Each step alternates:

1. the latent discriminator ``D_Z`` learns to tell prior codes ``z ~ N(0, I)``
   (real) from encoded codes ``E(x)`` (fake);
2. encoder and decoder minimise ``0.05 * ||x - G(E(x))||^2 + reg_weight *
   (-log D_Z(E(x)))``: the non-saturating GAN loss, as in the official code.

The encoder is deterministic and the 0.05 factor is the official "l2sq" cost,
so the paper's MNIST ``lambda = 1`` is ``reg_weight=1`` (this model's default).
The paper uses Adam with beta1 0.5 (``AEConfig(beta1=0.5)``) and lr 1e-3.
"""

from __future__ import annotations

import torch

from vegan.config import AEConfig
from vegan.models.base import GenerativeModel, gan_loss, latent_discriminator_step, reconstruction_cost
from vegan.models.wae_mmd import WAE_RECON_SCALE
from vegan.nets import build_encoder, build_latent_discriminator


class WAEGAN(GenerativeModel):
    name = "wae-gan"
    default_reg_weight = 1.0
    main_loss = "recon"  # the adversarial term oscillates by design

    def __init__(self, cfg: AEConfig, shape: tuple[int, ...]):
        super().__init__(cfg, shape)
        self.encoder = build_encoder(self.shape, self.latent_dim, self.arch, cfg.width)
        self.decoder = self._build_decoder(cfg.width)
        self.latent_disc = build_latent_discriminator(self.latent_dim, cfg.width)

    def make_optimizers(self, cfg: AEConfig) -> dict[str, torch.optim.Optimizer]:
        autoencoder = [*self.encoder.parameters(), *self.decoder.parameters()]
        return {"model": self.adam(autoencoder, cfg), "disc": self.adam(self.latent_disc.parameters(), cfg)}

    def train_step(self, x, optimizers, gen) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        disc = latent_discriminator_step(self.latent_disc, optimizers["disc"], self.noise(z.shape, gen), z)
        recon = WAE_RECON_SCALE * reconstruction_cost(self.decoder(z), x, self.recon)
        adv = gan_loss(self.latent_disc(z), True)
        loss = recon + self.reg_weight * adv
        opt = optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "recon": recon.detach(), "adv": adv.detach(), "disc": disc}
