"""Cookbook models: construction, shapes, samplers, and that each one learns."""

from __future__ import annotations

import typing

import pytest
import torch

from vegan.config import AEConfig, DataConfig
from vegan.data import load_dataset
from vegan.models import MODELS, build_model
from vegan.models.wae_mmd import mmd_imq
from vegan.training import train_model

AUTOENCODERS = [m for m in MODELS if m != "wgan-gp"]


def small(model: str, **kw) -> AEConfig:
    base = dict(model=model, latent_dim=4, width=16, steps=60, batch_size=32, lr=2e-3, beta1=0.5)
    return AEConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits", limit=256))


@pytest.fixture(scope="module")
def grid():
    return load_dataset(DataConfig(name="grid2d", limit=256))


def test_models_match_config_choices():
    assert MODELS == typing.get_args(AEConfig.model_fields["model"].annotation)


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model(small("vae"), (1, 8, 8))
    b = build_model(small("vae"), (1, 8, 8))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_learns(name, digits):
    cfg = small(name)
    model = build_model(cfg, digits.shape)
    before = _moment_gap(model, digits.data)
    res = train_model(model, digits.data, cfg, progress=False, log_every=1)
    curve = [h[model.main_loss] for h in res.history]
    assert len(curve) == cfg.steps
    early, late = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert late < early, f"{name}: {model.main_loss} went from {early:.4f} to {late:.4f}"
    # Its own samples move towards the data (pixel mean and spread).
    assert _moment_gap(res.model, digits.data) < before


def _moment_gap(model, data: torch.Tensor) -> float:
    model.eval()
    if model.name == "ae" and not bool(model.prior_fitted):
        with torch.no_grad():
            model.fit_prior(model.encode(data))
    s = model.sample(len(data), torch.Generator().manual_seed(0))
    return float((s.mean(0) - data.mean(0)).norm() + (s.std(0) - data.std(0)).norm())


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_shapes_on_images(name, digits):
    model = build_model(small(name), digits.shape).eval()
    x = digits.data[:5]
    with torch.no_grad():
        z = model.encode(x)
        x_hat = model.decode(z)
    assert model.has_encoder and model.latent_dim == 4
    assert z.shape == (5, 4) and x_hat.shape == x.shape
    assert 0 <= x_hat.min() and x_hat.max() <= 1
    assert model.decode(z).shape == model.decoder(z).shape


@pytest.mark.parametrize("name", MODELS)
def test_shapes_on_vectors(name, grid):
    cfg = small(name, steps=3)
    model = train_model(build_model(cfg, grid.shape), grid.data, cfg, progress=False).model
    assert model.arch == "mlp"
    assert model.sample(7, torch.Generator().manual_seed(1)).shape == (7, 2)
    if model.has_encoder:
        with torch.no_grad():
            assert model.decode(model.encode(grid.data[:7])).shape == (7, 2)


def test_mlp_decoder_on_images_stays_in_unit_interval(digits):
    model = build_model(small("ae", arch="mlp"), digits.shape).eval()
    out = model.decode(torch.randn(9, 4) * 100)
    assert out.shape == (9, 1, 8, 8) and 0 <= out.min() and out.max() <= 1


def test_wgan_gp_has_no_encoder(digits):
    model = build_model(small("wgan-gp"), digits.shape)
    assert not model.has_encoder and model.batch_multiplier == 5
    with pytest.raises(NotImplementedError, match="no encoder"):
        model.encode(digits.data[:2])
    assert model.sample(3).shape == (3, 1, 8, 8)


def test_bce_on_vectors_is_refused():
    with pytest.raises(ValueError, match="bce"):
        build_model(small("vae", recon="bce"), (2,))


def test_vae_recon_defaults():
    assert build_model(small("vae"), (1, 8, 8)).recon == "bce"
    assert build_model(small("vae"), (2,)).recon == "mse"
    assert build_model(small("ae"), (1, 8, 8)).recon == "mse"


def test_reg_weight_defaults_and_override():
    assert build_model(small("wae-mmd"), (2,)).reg_weight == 10.0
    assert build_model(small("vae"), (2,)).reg_weight == 1.0
    assert build_model(small("wgan-gp"), (2,)).reg_weight == 10.0
    assert build_model(small("vae", reg_weight=0.5), (2,)).reg_weight == 0.5


def test_ae_sampler_gaussian_and_mixture(digits):
    model = build_model(small("ae"), digits.shape).eval()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.sample(2)
    codes = torch.randn(500, 4) * 3 + 1
    model.fit_prior(codes)
    z = model.prior_sample(4000, torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), codes.mean(0), atol=0.3)
    assert torch.allclose(z.std(0), codes.std(0), rtol=0.1)

    gmm = build_model(small("ae", prior_components=2), digits.shape).eval()
    two = torch.cat([torch.randn(200, 4) - 5, torch.randn(200, 4) + 5])
    gmm.fit_prior(two, seed=0)
    z = gmm.prior_sample(1000, torch.Generator().manual_seed(0))
    assert (z[:, 0].abs() > 2.5).float().mean() > 0.95  # both modes, little mass between
    assert gmm.sample(3).shape == (3, 1, 8, 8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(gmm.sample(4, g1), gmm.sample(4, g2))


def test_mmd_imq_separates_distributions():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    assert abs(float(mmd_imq(p, q))) < 0.02
    assert float(mmd_imq(p + 2.0, q)) > 0.2


def test_sampling_mid_training_leaves_batch_norm_alone():
    model = build_model(small("vae"), (1, 8, 8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.sample(8)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
