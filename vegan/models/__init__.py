"""The VEGAN cookbook (Bousquet et al. 2017): AE, VAE, WAE-MMD, WAE-GAN, AAE, WGAN-GP.

One file per model, each a :class:`GenerativeModel` with its loss, all built on
the same nets from :mod:`vegan.nets` so that comparisons are fair. Every model
trains with :func:`vegan.training.train_model`.

>>> model = build_model(AEConfig(model="wae-mmd"), shape=(1, 8, 8))
"""

from __future__ import annotations

import torch

from vegan.config import AEConfig
from vegan.models.aae import AAE
from vegan.models.ae import AE
from vegan.models.base import GenerativeModel
from vegan.models.vae import VAE
from vegan.models.wae_gan import WAEGAN
from vegan.models.wae_mmd import WAEMMD
from vegan.models.wgan_gp import WGANGP

_REGISTRY: dict[str, type[GenerativeModel]] = {cls.name: cls for cls in (AE, VAE, WAEMMD, WAEGAN, AAE, WGANGP)}

MODELS: tuple[str, ...] = tuple(_REGISTRY)
"""Model names, the same as the ``AEConfig.model`` choices."""


def build_model(cfg: AEConfig, shape: tuple[int, ...]) -> GenerativeModel:
    """Build ``cfg.model`` for examples of ``shape``: (C, H, W) images in [0, 1] or (D,) vectors.

    Weights are initialised from ``cfg.seed`` without touching the global RNG,
    so the same config always gives the same initial model.
    """
    if cfg.model not in _REGISTRY:
        raise ValueError(f"unknown model {cfg.model!r}; models are {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _REGISTRY[cfg.model](cfg, tuple(shape))


__all__ = ["MODELS", "GenerativeModel", "build_model", "AE", "VAE", "WAEMMD", "WAEGAN", "AAE", "WGANGP"]
