"""Variational autoencoder (Kingma & Welling 2014).

Loss (negative ELBO with a weight on the KL, i.e. a beta-VAE when
``reg_weight != 1``)::

    E_q(z|x)[-log p(x|z)] + reg_weight * KL(q(z|x) || N(0, I))

The encoder outputs the mean and log-variance of a Gaussian posterior. The
likelihood is Bernoulli (``recon="bce"``, the default on images) or Gaussian
(``recon="mse"``: squared error, the default on vectors). In the cookbook view
the KL term asks *every* posterior to match the prior, which is why VAE samples
are blurrier than WAE ones, whose penalty only matches the aggregate posterior.
"""

from __future__ import annotations

import torch

from vegan.config import AEConfig
from vegan.models.base import GenerativeModel, gaussian_posterior, reconstruction_cost, reparametrize
from vegan.nets import build_encoder


class VAE(GenerativeModel):
    name = "vae"
    default_reg_weight = 1.0

    def __init__(self, cfg: AEConfig, shape: tuple[int, ...]):
        super().__init__(cfg, shape)
        self.encoder = build_encoder(self.shape, 2 * self.latent_dim, self.arch, cfg.width)
        self.decoder = self._build_decoder(cfg.width)

    def _resolve_recon(self, recon: str) -> str:
        if recon == "auto":
            return "bce" if self.is_image else "mse"
        return super()._resolve_recon(recon)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean."""
        return gaussian_posterior(self.encoder(x))[0]

    def losses(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        mu, logvar = gaussian_posterior(self.encoder(x))
        z = reparametrize(mu, logvar, gen)
        recon = reconstruction_cost(self.decoder(z), x, self.recon)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1).mean()
        return {"loss": recon + self.reg_weight * kl, "recon": recon, "kl": kl}
