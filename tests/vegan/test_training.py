"""The resumable trainer: exact resume, corrupt checkpoints, idempotence, SIGTERM, errors."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from vegan.checkpoint import CheckpointDir
from vegan.config import AEConfig, DataConfig
from vegan.data import load_dataset
from vegan.device import resolve_device
from vegan.models import MODELS, build_model
from vegan.storage import Storage
from vegan.training import BatchIndices, TrainingError, TrainingInterrupted, train_model


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(name="digits", limit=256)).data


def cfg_for(model: str = "vae", **kw) -> AEConfig:
    base = dict(model=model, latent_dim=4, width=8, steps=12, batch_size=32, checkpoint_every=4, lr=1e-3)
    return AEConfig(**{**base, **kw})


def ckpt_dir(tmp_path, name="ckpt", keep=3) -> CheckpointDir:
    return CheckpointDir(Storage(str(tmp_path / name)), keep=keep)


def run(data, cfg, ckpt=None):
    return train_model(build_model(cfg, tuple(data.shape[1:])), data, cfg, ckpt, progress=False, log_every=1)


def assert_same_state(ckpt_a: CheckpointDir, ckpt_b: CheckpointDir):
    a, b = ckpt_a.load_latest(), ckpt_b.load_latest()
    assert a["step"] == b["step"]
    for key in a["state"]["model"]:
        assert torch.equal(a["state"]["model"][key], b["state"]["model"][key]), key
    optimizers = [k for k in a["state"] if k.startswith("optimizer.")]
    assert optimizers and a["state"].keys() == b["state"].keys()
    for name in optimizers:
        sa, sb = a["state"][name]["state"], b["state"][name]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(sa[i][k], sb[i][k]), (name, i, k)
    assert torch.equal(a["rng"], b["rng"])


@pytest.mark.parametrize("name", MODELS)
def test_resume_is_identical_to_uninterrupted(name, data, tmp_path):
    full, split = ckpt_dir(tmp_path, "full"), ckpt_dir(tmp_path, "split")
    res_full = run(data, cfg_for(name), full)
    first = run(data, cfg_for(name, steps=6), split)
    assert first.step == 6 and first.resumed_from is None
    second = run(data, cfg_for(name), split)
    assert second.resumed_from == 6 and second.step == 12
    assert_same_state(full, split)
    for key, value in res_full.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key])
    assert [h["step"] for h in second.history] == list(range(1, 13))


def test_corrupt_newest_checkpoint_falls_back(data, tmp_path):
    ref, ckpt = ckpt_dir(tmp_path, "ref"), ckpt_dir(tmp_path)
    run(data, cfg_for(), ref)
    run(data, cfg_for(), ckpt)
    assert ckpt.steps() == [4, 8, 12]
    ckpt.storage.write_bytes("ckpt-00000012.pt", b"truncated upload")
    res = run(data, cfg_for(), ckpt)
    assert res.resumed_from == 8 and res.step == 12
    assert_same_state(ref, ckpt)


def test_finished_run_is_not_trained_again(data, tmp_path, monkeypatch):
    ckpt = ckpt_dir(tmp_path)
    first = run(data, cfg_for(), ckpt)
    model = build_model(cfg_for(), tuple(data.shape[1:]))
    monkeypatch.setattr(model, "train_step", lambda *a: pytest.fail("trained again"))
    again = train_model(model, data, cfg_for(), ckpt, progress=False)
    assert again.step == 12 and again.resumed_from == 12
    assert again.history == first.history
    assert ckpt.steps() == [4, 8, 12]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])


def test_keeps_only_the_newest_checkpoints(data, tmp_path):
    ckpt = ckpt_dir(tmp_path, keep=1)  # overridden by the config
    run(data, cfg_for(keep_checkpoints=2, checkpoint_every=2), ckpt)
    assert ckpt.steps() == [10, 12]


def test_sigterm_checkpoints_then_resumes_exactly(data, tmp_path, monkeypatch):
    ref, ckpt = ckpt_dir(tmp_path, "ref"), ckpt_dir(tmp_path)
    run(data, cfg_for(), ref)
    previous = signal.getsignal(signal.SIGTERM)
    model = build_model(cfg_for(), tuple(data.shape[1:]))
    real_step, calls = model.train_step, []

    def step_then_sigterm(*args):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args)

    monkeypatch.setattr(model, "train_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted) as info:
        train_model(model, data, cfg_for(), ckpt, progress=False, log_every=1)
    assert info.value.step == 7 and ckpt.steps() == [4, 7]
    assert signal.getsignal(signal.SIGTERM) is previous
    res = run(data, cfg_for(), ckpt)
    assert res.resumed_from == 7
    assert_same_state(ref, ckpt)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    ckpt = ckpt_dir(tmp_path)
    model = build_model(cfg_for(), tuple(data.shape[1:]))
    real_step, calls = model.train_step, []

    def nan_at_seven(*args):
        calls.append(1)
        out = real_step(*args)
        return {**out, "kl": torch.tensor(float("nan"))} if len(calls) == 7 else out

    monkeypatch.setattr(model, "train_step", nan_at_seven)
    with pytest.raises(TrainingError, match=r"kl=nan at step 7.*checkpoint: step 4"):
        train_model(model, data, cfg_for(), ckpt, progress=False)
    assert ckpt.steps() == [4]


def test_bad_data_is_refused(data):
    cfg = cfg_for()
    model = build_model(cfg, tuple(data.shape[1:]))
    bad = data.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(TrainingError, match="NaN"):
        train_model(model, bad, cfg, progress=False)
    with pytest.raises(TrainingError, match=r"shape \(1, 16, 4\)"):
        train_model(model, data.reshape(-1, 1, 16, 4), cfg, progress=False)
    with pytest.raises(TrainingError, match="float"):
        train_model(model, (data * 16).long(), cfg, progress=False)


def test_checkpoint_of_another_model_is_refused(data, tmp_path):
    ckpt = ckpt_dir(tmp_path)
    run(data, cfg_for("ae"), ckpt)
    with pytest.raises(TrainingError, match=r"belongs to \{'model': 'ae'"):
        run(data, cfg_for("vae", steps=20), ckpt)


def test_returns_cpu_model_in_eval_mode_with_history(data):
    res = train_model(
        build_model(cfg_for(), tuple(data.shape[1:])), data, cfg_for(steps=10), progress=True, log_every=4
    )
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not res.model.training and res.model.device.type == "cpu"
    assert [h["step"] for h in res.history] == [1, 4, 8, 10]
    assert {"loss", "recon", "kl", "seconds"} <= res.history[-1].keys()


def test_batches_depend_only_on_seed_and_step():
    a, b = BatchIndices(10, 4, seed=3), BatchIndices(10, 4, seed=3)
    first = [a(s) for s in range(6)]
    assert all(torch.equal(b(s), first[s]) for s in reversed(range(6)))
    stream = torch.cat(first)  # 24 indices: epochs 0, 1 and part of 2, each a permutation
    assert sorted(stream[:10].tolist()) == list(range(10)) == sorted(stream[10:20].tolist())
    assert not torch.equal(stream[:10], stream[10:20])
    big = BatchIndices(3, 8, seed=0)(0)  # batch larger than the data wraps around epochs
    assert len(big) == 8 and set(big.tolist()) == {0, 1, 2}
