"""Named starting configurations for ``vegan run --preset NAME``.

Presets are plain nested dicts so a YAML file or ``--set key=value`` can override
any field on top of them. Budgets are chosen for a 2-core CPU unless noted.
"""

from __future__ import annotations

import copy

PRESETS: dict[str, dict] = {
    # A few minutes at most on 2 CPU cores: the integration tests run this.
    "tiny": {
        "name": "tiny",
        "data": {"name": "digits", "limit": 512},
        "ae": {"latent_dim": 8, "width": 16, "steps": 150, "batch_size": 64, "checkpoint_every": 50},
        "latents": {"chunk_rows": 128},
        # Sample sizes are automatic (from n and tol); a tiny run stops at 0.5.
        "ot": {"max_iter": 150, "tol": 0.5, "checkpoint_every": 25},
        "generate": {"n_samples": 256, "k": 4, "centroid_samples": 32768},
        "gan": {"steps": 30, "batch_size": 32, "checkpoint_every": 10},
        "eval": {"n_samples": 256, "extractor": "auto", "kid_subset_size": 100},
    },
    # `make demo`: MNIST on CPU in a few minutes, a real (if short) AE-OT-GAN run.
    "demo": {
        "name": "demo",
        "data": {"name": "mnist", "limit": 10000},
        "ae": {"latent_dim": 16, "width": 32, "steps": 1500, "batch_size": 128, "checkpoint_every": 250},
        "latents": {"chunk_rows": 2048},
        # 10k codes, aiming at a verified max relative cell error of 0.3 (every cell
        # within 30 % of its mass). The sample sizes and the iteration cap bound the
        # stage's time on 2 CPU cores (16 samples per code at first, 64 at most).
        "ot": {"n_samples": 163840, "max_samples": 655360, "max_iter": 60, "tol": 0.3},
        "generate": {"n_samples": 2000, "k": 8, "centroid_samples": 200000},
        "gan": {"steps": 300, "batch_size": 64},
        "eval": {"n_samples": 2000, "extractor": "auto"},
    },
    # Full datasets: meant for a GPU worker (works on CPU, slowly).
    "mnist": {
        "name": "mnist",
        "data": {"name": "mnist"},
        "ae": {"latent_dim": 64, "width": 64, "steps": 20000, "batch_size": 256},
        "latents": {"chunk_rows": 8192},
        "ot": {"max_iter": 2000, "tol": 0.1},
        "generate": {"n_samples": 10000, "k": 16, "centroid_samples": 2000000},
        "gan": {"steps": 5000, "batch_size": 128},
        "eval": {"n_samples": 10000, "extractor": "inception-tf"},
    },
    # The 2-D grid of 25 Gaussians: mode coverage without any image network.
    "grid2d": {
        "name": "grid2d",
        "data": {"name": "grid2d", "limit": 5000},
        "ae": {"latent_dim": 2, "width": 128, "steps": 3000, "batch_size": 256, "lr": 1e-3},
        "latents": {"chunk_rows": 4096},
        # In 2-D the kernel is memory-bound (N x n scores, almost no FLOPs per
        # score): 5,000 codes keep an iteration well under a second on CPU.
        "ot": {"max_iter": 300, "tol": 0.3},
        # In 2-D the angle between adjacent cells is tiny inside a mode and large across a gap:
        # 20 deg lets fewer mixes across gaps through than the default 40.1 (0.70 % vs 1.10 %
        # off-mode, docs/BENCHMARKS.md "Angle threshold sweep").
        "generate": {"n_samples": 5000, "k": 8, "angle_threshold": 20.0, "centroid_samples": 400000},
        "gan": {"enabled": False},
        "eval": {"n_samples": 5000},
    },
}


PRESETS["fashion-mnist"] = {
    **copy.deepcopy(PRESETS["mnist"]),
    "name": "fashion-mnist",
    "data": {"name": "fashion-mnist"},
}


def preset_dict(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
