"""compare_models: same budget for every model, table and sample grid written, rerun is cheap."""

from __future__ import annotations

import torch

from vegan.compare import compare_models
from vegan.config import AEConfig, DataConfig
from vegan.data import load_dataset
from vegan.storage import Storage

DATA = DataConfig(name="digits", limit=256)
BASE = AEConfig(latent_dim=4, width=8, steps=20, batch_size=32, checkpoint_every=10, lr=2e-3)


def pixel_stats(real: torch.Tensor):
    """A trivial evaluate_fn: how far each model's pixel mean is from the data's."""

    def evaluate(samples: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        return {
            name: {"mean": float(x.mean()), "mean_gap": float((x.mean(0) - real.mean(0)).abs().mean())}
            for name, x in samples.items()
        }

    return evaluate


def test_compare_writes_table_and_grid(tmp_path):
    storage = Storage(str(tmp_path / "run"))
    real = load_dataset(DATA).data
    seen = {}

    def evaluate(samples):
        seen.update(samples)
        return pixel_stats(real)(samples)

    models = ["ae", "vae", "wgan-gp"]
    out = compare_models(DATA, models, BASE, storage, evaluate, n_samples=32)
    assert list(seen) == models and all(x.shape == (32, 1, 8, 8) for x in seen.values())
    assert set(out["metrics"]) == set(models) and out["train"]["vae"]["steps"] == 20
    table = storage.read_text("compare/table.md")
    assert table.count("\n") == 2 + len(models) and "mean_gap" in table and "| wgan-gp |" in table
    assert storage.read_json("compare/table.json")["metrics"]["ae"]["mean"] == out["metrics"]["ae"]["mean"]
    assert storage.read_bytes("compare/samples.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(
        n.startswith("ckpt-") for n in storage.sub("compare", "vae", storage.listdir("compare/vae")[0]).listdir()
    )

    # Rerun: every model loads its final checkpoint and draws the same samples.
    again = compare_models(DATA, models, BASE, storage, pixel_stats(real), n_samples=32)
    assert again["metrics"] == out["metrics"]


def test_compare_on_vectors(tmp_path):
    data = DataConfig(name="grid2d", limit=200)
    storage = Storage(str(tmp_path / "grid"))
    out = compare_models(
        data,
        ["wae-mmd", "aae"],
        BASE.model_copy(update={"steps": 5}),
        storage,
        lambda s: {k: {"std": float(v.std())} for k, v in s.items()},
    )
    assert set(out["metrics"]) == {"wae-mmd", "aae"}
    assert storage.exists("compare/samples.png")
