"""Encoder, decoder and discriminator networks shared by every model.

Three families: small DCGAN-style conv nets for images (C x H x W with H, W
divisible by 4; ``conv``: two stride-2 layers), the same nets with a 3x3 conv
block at every resolution and twice the channels at the bottom (``deep-conv``:
the capacity of the AE-OT paper's MNIST nets, for FID-grade samples), and MLPs
for vector data such as the 2-D Gaussian grid. Every model of the cookbook and
AE-OT-GAN use these same nets, so comparisons are fair.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def is_image_shape(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


CONV_ARCHS = ("conv", "deep-conv")


def resolve_arch(arch: str, shape: tuple[int, ...]) -> str:
    if arch == "auto":
        return "conv" if is_image_shape(shape) else "mlp"
    if arch in CONV_ARCHS and not is_image_shape(shape):
        raise ValueError(f"{arch} nets need image data (C, H, W), got shape {shape}")
    if arch in CONV_ARCHS and (shape[1] % 4 or shape[2] % 4):
        raise ValueError(f"{arch} nets need H and W divisible by 4, got {shape[1]}x{shape[2]}")
    return arch


def _conv_block(c_in: int, c_out: int, norm: bool, act: nn.Module) -> list[nn.Module]:
    """3x3 stride-1 conv (+ batch norm) + activation: capacity at one resolution."""
    return [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out) if norm else nn.Identity(), act]


def _mlp(n_in: int, n_out: int, width: int, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth - 1):
        layers += [nn.Linear(d, width), nn.LeakyReLU(0.2)]
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Image -> vector of size ``out_dim`` (two stride-2 convs and a linear head)."""

    def __init__(self, shape: tuple[int, int, int], out_dim: int, width: int = 64, norm: bool = True):
        super().__init__()
        c, h, w = shape
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width) if norm else nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.feature_dim = 2 * width * (h // 4) * (w // 4)
        self.head = nn.Linear(self.feature_dim, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ConvDecoder(nn.Module):
    """Vector -> image in [0, 1] (linear stem and two stride-2 transposed convs)."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int, width: int = 64):
        super().__init__()
        c, h, w = shape
        self.stem_shape = (2 * width, h // 4, w // 4)
        self.stem = nn.Sequential(nn.Linear(latent_dim, math.prod(self.stem_shape)), nn.ReLU())
        self.body = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(z).view(-1, *self.stem_shape))


class DeepConvEncoder(nn.Module):
    """Image -> vector: a 3x3 block at full, half and quarter resolution, with
    stride-2 convs between them (channels ``width``, ``2 width``, ``4 width``)."""

    def __init__(self, shape: tuple[int, int, int], out_dim: int, width: int = 64, norm: bool = True):
        super().__init__()
        c, h, w = shape

        def act() -> nn.Module:
            return nn.LeakyReLU(0.2)

        def bn(ch: int) -> nn.Module:
            return nn.BatchNorm2d(ch) if norm else nn.Identity()

        self.body = nn.Sequential(
            *_conv_block(c, width, norm, act()),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            bn(2 * width),
            act(),
            *_conv_block(2 * width, 2 * width, norm, act()),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
            bn(4 * width),
            act(),
            *_conv_block(4 * width, 4 * width, norm, act()),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width * (h // 4) * (w // 4)
        self.head = nn.Linear(self.feature_dim, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class DeepConvDecoder(nn.Module):
    """Vector -> image in [0, 1]: the mirror of :class:`DeepConvEncoder`, ending in a
    3x3 conv at full resolution (sharper strokes than a last transposed conv)."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int, width: int = 64):
        super().__init__()
        c, h, w = shape
        self.stem_shape = (4 * width, h // 4, w // 4)
        self.stem = nn.Sequential(nn.Linear(latent_dim, math.prod(self.stem_shape)), nn.ReLU())
        self.body = nn.Sequential(
            *_conv_block(4 * width, 4 * width, True, nn.ReLU()),
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            *_conv_block(2 * width, 2 * width, True, nn.ReLU()),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, c, 3, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(z).view(-1, *self.stem_shape))


class MLPEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], out_dim: int, width: int = 64):
        super().__init__()
        self.n_in = math.prod(shape)
        self.body = nn.Sequential(nn.Flatten(), *list(_mlp(self.n_in, width, width, depth=2)), nn.LeakyReLU(0.2))
        self.feature_dim = width
        self.head = nn.Linear(width, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class MLPDecoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent_dim: int, width: int = 64):
        super().__init__()
        self.shape = tuple(shape)
        self.net = _mlp(latent_dim, math.prod(shape), width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class Discriminator(nn.Module):
    """Critic on data space: ``forward`` gives one logit per input, ``features`` the
    penultimate activations (used by AE-OT-GAN's feature-matching loss)."""

    def __init__(self, shape: tuple[int, ...], arch: str, width: int = 64, spectral_norm: bool = False):
        super().__init__()
        arch = resolve_arch(arch, shape)
        # No batch norm in critics: it breaks the gradient penalty and couples samples.
        self.net = _ENCODERS[arch](shape, 1, width, norm=False) if arch in CONV_ARCHS else MLPEncoder(shape, 1, width)
        if spectral_norm:
            for module in list(self.net.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(module)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


_ENCODERS = {"conv": ConvEncoder, "deep-conv": DeepConvEncoder, "mlp": MLPEncoder}
_DECODERS = {"conv": ConvDecoder, "deep-conv": DeepConvDecoder, "mlp": MLPDecoder}


def build_encoder(shape: tuple[int, ...], out_dim: int, arch: str = "auto", width: int = 64) -> nn.Module:
    return _ENCODERS[resolve_arch(arch, shape)](shape, out_dim, width)


def build_decoder(shape: tuple[int, ...], latent_dim: int, arch: str = "auto", width: int = 64) -> nn.Module:
    return _DECODERS[resolve_arch(arch, shape)](shape, latent_dim, width)


def build_latent_discriminator(latent_dim: int, width: int = 64) -> nn.Module:
    """Critic on codes (WAE-GAN, AAE): an MLP with one logit out."""
    return nn.Sequential(_mlp(latent_dim, 1, width), nn.Flatten(0))
