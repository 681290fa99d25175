"""Plain deterministic autoencoder: the first stage of AE-OT.

Loss: reconstruction only (``recon`` = mse or bce). A plain AE has no prior, so
its own sampler is fitted after training: a Gaussian on the training codes
(``prior_components=1``) or a K-component Gaussian mixture. This is the
baseline AE-OT improves on: the OT map replaces this fitted density.
"""

from __future__ import annotations

import torch

from vegan.config import AEConfig
from vegan.models.base import GenerativeModel, reconstruction_cost
from vegan.nets import build_encoder


class AE(GenerativeModel):
    name = "ae"

    def __init__(self, cfg: AEConfig, shape: tuple[int, ...]):
        super().__init__(cfg, shape)
        self.encoder = build_encoder(self.shape, self.latent_dim, self.arch, cfg.width)
        self.decoder = self._build_decoder(cfg.width)
        k, d = cfg.prior_components, self.latent_dim
        # Buffers, so the fitted sampler travels in state_dict and checkpoints.
        self.register_buffer("prior_weights", torch.full((k,), 1.0 / k))
        self.register_buffer("prior_means", torch.zeros(k, d))
        self.register_buffer("prior_scale_tril", torch.eye(d).repeat(k, 1, 1))
        self.register_buffer("prior_fitted", torch.tensor(False))

    def losses(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": reconstruction_cost(self.decoder(self.encoder(x)), x, self.recon)}

    def after_training(self, data: torch.Tensor, cfg: AEConfig) -> None:
        with torch.no_grad():
            codes = torch.cat([self.encode(b.to(self.device)).cpu() for b in data.split(512)])
        self.fit_prior(codes, seed=cfg.seed)

    def fit_prior(self, codes: torch.Tensor, seed: int = 0) -> None:
        """Fit the sampler to codes: one Gaussian, or a full-covariance mixture (sklearn EM)."""
        codes = codes.double()
        k, d = self.prior_means.shape
        if k == 1:
            means = codes.mean(0, keepdim=True)
            covs = torch.cov(codes.T).reshape(1, d, d)
            weights = torch.ones(1, dtype=torch.float64)
        else:
            from sklearn.mixture import GaussianMixture

            if len(codes) < k:
                raise ValueError(f"cannot fit {k} mixture components to {len(codes)} codes")
            gmm = GaussianMixture(k, covariance_type="full", random_state=seed).fit(codes.numpy())
            means, covs, weights = (torch.from_numpy(a) for a in (gmm.means_, gmm.covariances_, gmm.weights_))
        # Jitter relative to the code scale: degenerate directions must not break Cholesky.
        jitter = 1e-6 * covs.diagonal(dim1=1, dim2=2).mean().clamp_min(1e-12)
        tril = torch.linalg.cholesky(covs + jitter * torch.eye(d, dtype=covs.dtype))
        self.prior_weights.copy_(weights)
        self.prior_means.copy_(means)
        self.prior_scale_tril.copy_(tril)
        self.prior_fitted.fill_(True)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if not bool(self.prior_fitted):
            raise RuntimeError(
                "this AE's sampler is not fitted yet: train it with vegan.training.train_model "
                "or call model.fit_prior(codes)"
            )
        device = generator.device if generator is not None else self.device
        comp = torch.multinomial(self.prior_weights.to(device), n, replacement=True, generator=generator)
        comp = comp.to(self.device)
        eps = self.noise((n, self.latent_dim), generator)
        return self.prior_means[comp] + (self.prior_scale_tril[comp] @ eps.unsqueeze(-1)).squeeze(-1)
