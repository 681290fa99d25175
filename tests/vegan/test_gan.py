"""AE-OT-GAN fine-tuning (vegan.gan) on sklearn digits with tiny nets."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vegan.checkpoint import CheckpointDir
from vegan.config import DataConfig, GANConfig
from vegan.data import load_dataset
from vegan.gan import GANResult, finetune_decoder
from vegan.nets import build_decoder
from vegan.storage import Storage
from vegan.training import TrainingError, TrainingInterrupted

LATENT = 4


@pytest.fixture(scope="module")
def digits():
    """64 digit images, fixed random paired codes, and 64 'generated' codes."""
    x = load_dataset(DataConfig(name="digits", limit=64)).data
    g = torch.Generator().manual_seed(0)
    return x, torch.randn(len(x), LATENT, generator=g), torch.randn(64, LATENT, generator=g)


def _decoder(shape=(1, 8, 8)):
    torch.manual_seed(0)
    return build_decoder(shape, LATENT, width=8)


def _cfg(**kw):
    base = dict(steps=6, batch_size=16, lr_g=1e-3, lr_d=1e-3, ema=0.9, checkpoint_every=2, device="cpu")
    return GANConfig(**{**base, **kw})


def _run(digits, cfg, **kw):
    x, paired, generated = digits
    return finetune_decoder(_decoder(), x, paired, generated, cfg, width=8, progress=False, **kw)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_runs_and_changes_the_weights(digits, loss):
    res = _run(digits, _cfg(loss=loss))
    assert isinstance(res, GANResult) and res.steps == 6
    assert not res.generator.training
    assert all(p.device.type == "cpu" for p in res.generator.parameters())
    assert not torch.equal(_params(res.generator), _params(_decoder()))
    assert [h["step"] for h in res.history] == [1, 6]
    assert {"step", "d_loss", "g_adv", "content", "pixel", "feature"} <= set(res.history[0])
    assert ("gp" in res.history[0]) == (loss == "wgan-gp")
    out = res.generator(digits[1][:3])
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()


def test_content_loss_decreases(digits):
    x, paired, generated = digits
    res = finetune_decoder(
        _decoder(),
        x,
        paired,
        generated,
        _cfg(steps=60, lr_g=3e-3, checkpoint_every=100),
        width=8,
        progress=False,
        log_every=10,
    )
    content = [h["content"] for h in res.history]
    pixel = [h["pixel"] for h in res.history]
    assert content[-1] < 0.8 * content[0]
    assert pixel[-1] < 0.7 * pixel[0]


def test_disabled_or_zero_steps_returns_the_decoder(digits):
    dec = _decoder()
    for cfg in (_cfg(steps=0), _cfg(enabled=False)):
        res = finetune_decoder(dec, *digits, cfg, width=8, progress=False)
        assert res.steps == 0 and res.history == []
        assert res.generator is not dec
        assert torch.equal(_params(res.generator), _params(dec))


def test_resume_matches_an_uninterrupted_run(digits, tmp_path):
    whole = _run(digits, _cfg(steps=6))
    ckpt = CheckpointDir(Storage(str(tmp_path / "gan")))
    first = _run(digits, _cfg(steps=3), checkpoints=ckpt)
    assert ckpt.steps()[-1] == 3
    second = _run(digits, _cfg(steps=6), checkpoints=ckpt)
    assert second.resumed_from == 3 and second.steps == 6
    assert not torch.equal(_params(first.generator), _params(second.generator))
    assert torch.equal(_params(whole.generator), _params(second.generator))
    assert [h["step"] for h in second.history] == [1, 3, 6]
    # Already finished: returns at once, same weights.
    again = _run(digits, _cfg(steps=6), checkpoints=ckpt)
    assert again.resumed_from == 6 and torch.equal(_params(again.generator), _params(whole.generator))


def test_corrupt_newest_checkpoint_falls_back(digits, tmp_path, caplog):
    ckpt = CheckpointDir(Storage(str(tmp_path / "gan")), keep=3)
    _run(digits, _cfg(steps=4), checkpoints=ckpt)  # checkpoints at 2 and 4
    assert ckpt.steps() == [2, 4]
    (tmp_path / "gan" / "ckpt-00000004.pt").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        res = _run(digits, _cfg(steps=6), checkpoints=ckpt)
    assert res.resumed_from == 2
    assert "corrupt checkpoint" in caplog.text
    assert torch.equal(_params(res.generator), _params(_run(digits, _cfg(steps=6)).generator))


def test_sigterm_saves_a_checkpoint_and_stops(digits, tmp_path, monkeypatch):
    import signal

    import vegan.gan as gan

    real_update = gan._update_ema

    def update_then_signal(ema, model, decay, step):
        real_update(ema, model, decay, step)
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(gan, "_update_ema", update_then_signal)
    ckpt = CheckpointDir(Storage(str(tmp_path / "gan")))
    with pytest.raises(TrainingInterrupted):
        _run(digits, _cfg(steps=6, checkpoint_every=100), checkpoints=ckpt)
    assert ckpt.steps() == [3]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path, monkeypatch):
    import vegan.gan as gan

    real_d_loss, calls = gan._d_loss, []

    def nan_at_five(*args):
        calls.append(1)
        loss, extra = real_d_loss(*args)
        return (loss * float("nan") if len(calls) == 5 else loss), extra

    monkeypatch.setattr(gan, "_d_loss", nan_at_five)
    ckpt = CheckpointDir(Storage(str(tmp_path / "gan")))
    with pytest.raises(
        TrainingError, match=r"AE-OT-GAN: non-finite loss d_loss=nan.* at step 5; last good checkpoint: step 4"
    ):
        _run(digits, _cfg(steps=6), checkpoints=ckpt)
    assert ckpt.steps() == [2, 4]


def test_checkpoint_of_other_settings_is_refused(digits, tmp_path):
    ckpt = CheckpointDir(Storage(str(tmp_path / "gan")))
    _run(digits, _cfg(steps=2, loss="hinge"), checkpoints=ckpt)
    with pytest.raises(TrainingError, match=r"belongs to .*'loss': 'hinge'"):
        _run(digits, _cfg(steps=4, loss="wgan-gp"), checkpoints=ckpt)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(paired=torch.zeros(10, LATENT)), "pair up"),
        (dict(paired=torch.zeros(64, LATENT + 1), generated=None), "dimension 5"),
        (dict(paired=torch.full((64, LATENT), float("nan"))), "paired_codes contains NaN"),
        (dict(generated=torch.full((5, LATENT), float("nan"))), "generated_codes contains NaN"),
        (dict(generated=torch.zeros(5, LATENT + 1)), "generated_codes must have shape"),
        (dict(x=torch.zeros(64, 1, 4, 4)), "shape"),
    ],
)
def test_bad_inputs(digits, change, match):
    x, paired, generated = digits
    args = {"x": x, "paired": paired, "generated": generated, **change}
    with pytest.raises(ValueError, match=match):
        finetune_decoder(_decoder(), args["x"], args["paired"], args["generated"], _cfg(), width=8, progress=False)


def test_codes_streamed_from_zarr_match_codes_in_memory(digits, tmp_path):
    """Images from a uint8 Zarr dataset, paired and generated codes from Zarr stores chunked unlike the
    images: the same fine-tuning as with everything in memory (paired codes follow their images)."""
    import zarr

    from vegan.data import Dataset, ZarrDataset, ingest
    from vegan.metrics.sources import ZarrCodes

    x, paired, generated = digits
    np.savez(tmp_path / "d.npz", x=(x.numpy() * 255).round().astype(np.uint8))
    ingest(str(tmp_path / "d.npz"), str(tmp_path / "d.zarr"), chunk_rows=16, progress=False)
    images = ZarrDataset(str(tmp_path / "d.zarr"))
    group = zarr.open_group(str(tmp_path / "codes.zarr"), mode="w")
    group.create_array("paired", data=paired.numpy(), chunks=(10, LATENT))
    group.create_array("generated", data=generated.numpy(), chunks=(7, LATENT))
    stored = [ZarrCodes(str(tmp_path / "codes.zarr"), name) for name in ("paired", "generated")]
    cfg = _cfg(steps=8)
    from_zarr = finetune_decoder(_decoder(), images, *stored, cfg, width=8, progress=False)
    in_memory = Dataset("x", images.float_rows(0, len(images)), None, chunk_rows=16)
    from_memory = finetune_decoder(_decoder(), in_memory, paired, generated, cfg, width=8, progress=False)
    torch.testing.assert_close(_params(from_zarr.generator), _params(from_memory.generator))
    losses = [{k: v for k, v in h.items() if k != "seconds"} for h in from_zarr.history]
    assert losses == [{k: v for k, v in h.items() if k != "seconds"} for h in from_memory.history]
