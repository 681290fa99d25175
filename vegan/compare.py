"""Train several cookbook models on the same budget and compare their own samples.

This is the library side of the compare flow: every model gets the same data,
nets, steps and batch size (only ``model`` differs from the base config), trains
resumably under ``compare/<model>/<key>/`` and draws samples from its own
sampler. Metrics come from a caller-supplied ``evaluate_fn`` so this module
stays independent of how metrics are computed. Outputs, all under
``compare/``: ``table.md``, ``table.json`` and ``samples.png`` (one row per model).
"""

from __future__ import annotations

import io
import logging
from typing import Callable

import torch

from vegan.checkpoint import CheckpointDir
from vegan.config import AEConfig, DataConfig, config_hash
from vegan.data import load_dataset
from vegan.models import MODELS, build_model
from vegan.storage import Storage
from vegan.training import train_model

log = logging.getLogger(__name__)

EvaluateFn = Callable[[dict[str, torch.Tensor]], dict[str, dict[str, float]]]
"""Takes ``{model name: samples}``, returns ``{model name: {metric: value}}``."""

# Fields that change where or how a run executes, not what it learns.
_RUN_ONLY = {"device", "checkpoint_every", "keep_checkpoints"}


def compare_models(
    data_cfg: DataConfig,
    models: list[str],
    base: AEConfig,
    storage: Storage,
    evaluate_fn: EvaluateFn,
    n_samples: int = 256,
    progress: bool = False,
) -> dict:
    """Train each of ``models`` with ``base``'s budget, sample, evaluate, write the table.

    Rerunning is cheap: finished trainings are loaded from their final
    checkpoint, and samples are drawn from a generator seeded by ``base.seed``,
    so the same call gives the same samples. Returns ``{"metrics": {model:
    {...}}, "train": {model: {...}}, "files": {name: uri}}``.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"models must be a non-empty list from {', '.join(MODELS)}; got {models}")
    models = list(dict.fromkeys(models))
    dataset = load_dataset(data_cfg)
    out = storage.sub("compare")

    samples: dict[str, torch.Tensor] = {}
    train: dict[str, dict] = {}
    for name in models:
        cfg = base.model_copy(update={"model": name})
        key = config_hash(
            {"ae": cfg.model_dump(mode="json", exclude=_RUN_ONLY), "data": data_cfg.model_dump(mode="json")}
        )
        ckpt = CheckpointDir(out.sub(name, key), keep=cfg.keep_checkpoints)
        model = build_model(cfg, dataset.shape)
        res = train_model(model, dataset.data, cfg, ckpt, progress=progress)
        last = res.history[-1] if res.history else {}
        train[name] = {
            "steps": res.step,
            "seconds": last.get("seconds"),
            "main_loss": model.main_loss,
            "final_loss": last.get(model.main_loss),
            "checkpoints": ckpt.storage.uri(),
        }
        samples[name] = res.model.sample(n_samples, torch.Generator().manual_seed(base.seed))
        log.info("compare: %s trained (%d steps), %d samples", name, res.step, n_samples)

    metrics = evaluate_fn(samples)
    missing = [m for m in models if m not in metrics]
    if missing:
        raise ValueError(f"evaluate_fn returned no metrics for {', '.join(missing)}")

    out.write_json(
        "table.json",
        {
            "data": data_cfg.model_dump(mode="json"),
            "base": base.model_dump(mode="json"),
            "train": train,
            "metrics": metrics,
        },
    )
    out.write_text("table.md", markdown_table(models, train, metrics))
    out.write_bytes("samples.png", samples_png(samples, dataset.data))
    files = {name: out.uri(name) for name in ("table.md", "table.json", "samples.png")}
    return {"metrics": metrics, "train": train, "files": files}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(models: list[str], train: dict[str, dict], metrics: dict[str, dict[str, float]]) -> str:
    """One row per model: training budget and final loss, then every metric (union of keys)."""
    names = list(dict.fromkeys(k for m in models for k in metrics[m]))
    header = ["model", "steps", "train s", "final loss", *names]
    rows = [
        [
            m,
            train[m]["steps"],
            train[m]["seconds"],
            f"{_fmt(train[m]['final_loss'])} ({train[m]['main_loss']})",
            *(metrics[m].get(k) for k in names),
        ]
        for m in models
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def samples_png(samples: dict[str, torch.Tensor], data: torch.Tensor, per_row: int = 16) -> bytes:
    """PNG with one row per model: an image strip, or for vectors a scatter over the data."""
    # A bare Figure (no pyplot) renders with Agg and touches no global backend state.
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid

    names = list(samples)
    images = data.ndim == 4
    if images:
        fig = Figure(figsize=(per_row * 0.6, 0.8 * len(names) + 0.2))
        axes = fig.subplots(len(names), 1, squeeze=False)
    else:
        fig = Figure(figsize=(3 * len(names), 3))
        axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes.flat, names):
        x = samples[name]
        if images:
            grid = make_grid(x[:per_row].clamp(0, 1), nrow=per_row, padding=1, pad_value=1.0)
            ax.imshow(grid.permute(1, 2, 0).numpy(), vmin=0, vmax=1, cmap="gray" if x.shape[1] == 1 else None)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_ylabel(name, rotation=0, ha="right", va="center")
        else:
            real = data[: max(len(x), 1000)]
            ax.scatter(real[:, 0], real[:, -1], s=2, c="0.8")
            ax.scatter(x[:, 0], x[:, -1], s=2)
            ax.set_title(name)
            lim = float(real.abs().max()) * 1.2 or 1.0
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
