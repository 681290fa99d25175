"""Wasserstein GAN with gradient penalty (Gulrajani et al. 2017).

No encoder: the "decoder" is the generator ``G: z ~ N(0, I) -> x``. One
training step is ``n_critic`` critic updates, each on a fresh real batch (the
trainer hands this model ``n_critic`` batches at once via ``batch_multiplier``),
then one generator update. Critic loss::

    D(G(z)) - D(x) + reg_weight * (||grad D(x_hat)|| - 1)^2,   x_hat = eps x + (1 - eps) G(z)

Generator loss ``-D(G(z))``. The paper's settings are ``reg_weight=10`` (this
model's default), ``n_critic=5``, Adam lr 1e-4 with betas (0.5, 0.9) or (0,
0.9): set ``AEConfig(lr=1e-4, beta1=0.5)``; beta2 is fixed at 0.9 here. The
reported ``w_dist`` is the critic's estimate of the Wasserstein-1 distance.
In the cookbook view this is OT in data space through the Kantorovich dual.
"""

from __future__ import annotations

import torch

from vegan.config import AEConfig
from vegan.models.base import GenerativeModel, gradient_penalty
from vegan.nets import Discriminator


class WGANGP(GenerativeModel):
    name = "wgan-gp"
    default_reg_weight = 10.0
    main_loss = "critic"  # falls while the critic learns; w_dist first rises, then falls
    has_encoder = False

    def __init__(self, cfg: AEConfig, shape: tuple[int, ...]):
        super().__init__(cfg, shape)
        self.decoder = self._build_decoder(cfg.width)
        self.critic = Discriminator(self.shape, self.arch, cfg.width)
        self.n_critic = cfg.n_critic
        self.batch_multiplier = cfg.n_critic

    @property
    def generator(self) -> torch.nn.Module:
        return self.decoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "wgan-gp has no encoder, so it cannot produce latent codes for AE-OT; "
            "use an autoencoder model (ae, vae, wae-mmd, wae-gan, aae)"
        )

    def make_optimizers(self, cfg: AEConfig) -> dict[str, torch.optim.Optimizer]:
        return {
            "model": self.adam(self.decoder.parameters(), cfg, beta2=0.9),
            "critic": self.adam(self.critic.parameters(), cfg, beta2=0.9),
        }

    def train_step(self, x, optimizers, gen) -> dict[str, torch.Tensor]:
        opt_c = optimizers["critic"]
        for real in x.chunk(self.n_critic):
            with torch.no_grad():
                fake = self.decoder(self.noise((real.shape[0], self.latent_dim), gen))
            w_dist = self.critic(real).mean() - self.critic(fake).mean()
            gp = gradient_penalty(self.critic, real, fake, gen)
            critic_loss = -w_dist + self.reg_weight * gp
            opt_c.zero_grad(set_to_none=True)
            critic_loss.backward()
            opt_c.step()
        n = max(1, x.shape[0] // self.n_critic)
        gen_loss = -self.critic(self.decoder(self.noise((n, self.latent_dim), gen))).mean()
        opt_g = optimizers["model"]
        opt_g.zero_grad(set_to_none=True)
        gen_loss.backward()
        opt_g.step()
        return {
            "w_dist": w_dist.detach(),
            "critic": critic_loss.detach(),
            "gp": gp.detach(),
            "generator": gen_loss.detach(),
        }
