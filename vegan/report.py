"""Evaluation artefacts: PNG sample grids and plots, ``report.md`` and ``metrics.json``.

Everything is rendered in memory and written through a :class:`~vegan.storage.Storage`,
so reports land atomically in a local run folder or an S3 prefix alike.
Figures use matplotlib's object API on an Agg canvas, not pyplot: no global
backend switch, no shared figure state between concurrent tasks.
"""

from __future__ import annotations

import io
import math
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vegan.data import GRID_MEANS, GRID_STD
from vegan.storage import Storage

_MIN_CELL_PX = 28  # tiny images (8x8 digits) are upscaled so a grid is readable


# ---------------------------------------------------------------- image grids
def _as_images(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().float().cpu()
    if x.ndim == 3:  # (N, H, W)
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1|3, H, W) or (N, H, W), got {tuple(x.shape)}")
    return x.clamp(0, 1)


def _png(grid: torch.Tensor) -> bytes:
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def _upscale(x: torch.Tensor) -> torch.Tensor:
    factor = max(1, math.ceil(_MIN_CELL_PX / x.shape[-1]))
    return x.repeat_interleave(factor, -1).repeat_interleave(factor, -2) if factor > 1 else x


def save_image_grid(storage: Storage, rel: str, images, nrow: int = 8, padding: int = 2) -> str:
    """PNG grid of images in [0, 1]; returns ``rel``."""
    from torchvision.utils import make_grid

    x = _upscale(_as_images(images))
    storage.write_bytes(rel, _png(make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)))
    return rel


def _nearest(queries: torch.Tensor, pool: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest rows of ``pool`` for each query (Euclidean), scanning the pool in chunks."""
    best_d = torch.full((len(queries), 0), float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    for start in range(0, len(pool), chunk):
        d = torch.cdist(queries, pool[start : start + chunk])
        d = torch.cat([best_d, d], 1)
        i = torch.cat([best_i, torch.arange(start, start + d.shape[1] - best_d.shape[1]).expand(len(queries), -1)], 1)
        best_d, order = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        best_i = i.gather(1, order)
    return best_d, best_i


def nearest_neighbour_grid(
    storage: Storage,
    rel: str,
    samples,
    train,
    k: int = 5,
    sample_features: torch.Tensor | None = None,
    train_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """One row per sample: the sample (red frame), then its ``k`` nearest training images.

    Shows that samples are new images rather than copies of the training set.
    Distances are in pixel space, or in feature space when both feature
    tensors are given. Returns the (n_samples, k) distances.
    """
    s, t = _as_images(samples), _as_images(train)
    qs = (sample_features if sample_features is not None else s.flatten(1)).float()
    pool = (train_features if train_features is not None else t.flatten(1)).float()
    if (sample_features is None) != (train_features is None):
        raise ValueError("give both sample_features and train_features, or neither (pixel space)")
    dist, idx = _nearest(qs, pool, k)
    neighbour_grid(storage, rel, s, t[idx])
    return dist


def neighbour_grid(storage: Storage, rel: str, samples, neighbours) -> str:
    """PNG: one row per sample, the sample (red frame) then its neighbours ``(n, k, C, H, W)``
    (found by :func:`nearest_neighbour_grid` in memory, or chunk by chunk over a large dataset)."""
    from torchvision.utils import make_grid

    s = _as_images(samples)
    t = _as_images(torch.as_tensor(neighbours).flatten(0, 1)).unflatten(0, tuple(neighbours.shape[:2]))
    s3, t3 = s.expand(-1, 3, -1, -1).clone(), t.expand(-1, -1, 3, -1, -1)
    s3[:, :, [0, -1], :] = s3.new_tensor([1.0, 0.0, 0.0])[:, None, None]
    s3[:, :, :, [0, -1]] = s3.new_tensor([1.0, 0.0, 0.0])[:, None, None]
    rows = torch.cat([s3[:, None], t3], 1).flatten(0, 1)  # (n * (k + 1), 3, H, W)
    storage.write_bytes(rel, _png(make_grid(_upscale(rows), nrow=t.shape[1] + 1, padding=2, pad_value=1.0)))
    return rel


# --------------------------------------------------------------------- plots
def _save_figure(storage: Storage, rel: str, fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    storage.write_bytes(rel, buf.getvalue())
    return rel


def _subsample(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(x) <= n:
        return np.arange(len(x))
    return np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))


def plot_codes_pca(storage: Storage, rel: str, codes, generated, labels=None, max_points: int = 5000) -> str:
    """2-D PCA (fitted on the training codes) of the codes, with generated codes overlaid."""
    from sklearn.decomposition import PCA

    codes = np.asarray(torch.as_tensor(codes).float().cpu()).reshape(len(codes), -1)
    gen = np.asarray(torch.as_tensor(generated).float().cpu()).reshape(len(generated), -1)
    if codes.shape[1] == 1:  # PCA to 2-D needs two dimensions: pad a zero one
        codes, gen = np.pad(codes, ((0, 0), (0, 1))), np.pad(gen, ((0, 0), (0, 1)))
    pca = PCA(n_components=2).fit(codes)
    ic, ig = _subsample(codes, max_points), _subsample(gen, max_points, seed=1)
    pc, pg = pca.transform(codes[ic]), pca.transform(gen[ig])
    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    if labels is not None:
        if len(labels) != len(codes):
            raise ValueError(f"{len(labels)} labels for {len(codes)} codes")
        lab = np.asarray(torch.as_tensor(labels).cpu())[ic]
        sc = ax.scatter(pc[:, 0], pc[:, 1], c=lab, cmap="tab10", s=4, alpha=0.5)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(pc[:, 0], pc[:, 1], s=4, alpha=0.4, color="tab:blue", label="codes")
    ax.scatter(pg[:, 0], pg[:, 1], s=10, marker="x", color="black", linewidths=0.7, label="generated")
    ev = pca.explained_variance_ratio_
    ax.set(xlabel=f"PC1 ({ev[0]:.0%})", ylabel=f"PC2 ({ev[1]:.0%})", title="Latent codes (PCA)")
    ax.legend(loc="best", markerscale=2)
    return _save_figure(storage, rel, fig)


def _series(history: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if v is not None and np.isfinite(v):
            xs.append(row.get("iteration", i))
            ys.append(float(v))
    return xs, ys


def plot_ot_history(storage: Storage, rel: str, history: list[Mapping[str, Any]]) -> str:
    """Energy and marginal errors of the OT solve; rows may lack the error keys."""
    fig = Figure(figsize=(10, 4))
    ax_e, ax_r = fig.subplots(1, 2)
    xs, ys = _series(history, "energy")
    ax_e.plot(xs, ys, color="tab:blue")
    ax_e.set(xlabel="iteration", ylabel="energy", title="OT energy")
    for key, color in (("max_rel_error", "tab:red"), ("l1_rel_error", "tab:green")):
        xs, ys = _series(history, key)
        if ys:
            ax_r.plot(xs, ys, marker="o", ms=3, color=color, label=key)
    if ax_r.lines:
        if all(y > 0 for line in ax_r.lines for y in line.get_ydata()):
            ax_r.set_yscale("log")
        ax_r.legend()
    else:
        ax_r.text(0.5, 0.5, "no marginal errors recorded", ha="center", va="center", transform=ax_r.transAxes)
    ax_r.set(xlabel="iteration", ylabel="relative error", title="Marginal error")
    return _save_figure(storage, rel, fig)


def plot_grid2d(storage: Storage, rel: str, real, generated, max_points: int = 5000) -> str:
    """Scatter of real and generated points of the 25-Gaussian grid, modes circled at 3 std.

    ``generated`` is one (N, 2) array or ``{name: array}``; several sets get one panel each
    so that a collapsed set cannot hide behind a good one.
    """
    sets = dict(generated) if isinstance(generated, Mapping) else {"generated": generated}
    real = np.asarray(real, dtype=np.float64)
    real = real[_subsample(real, max_points)]
    cols = min(3, len(sets))
    rows = math.ceil(len(sets) / cols)
    fig = Figure(figsize=(4.5 * cols, 4.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    t = np.linspace(0, 2 * np.pi, 60)
    for ax, (name, gen) in zip(axes, sets.items()):
        gen = np.asarray(gen, dtype=np.float64)
        gen = gen[_subsample(gen, max_points, seed=1)]
        ax.scatter(real[:, 0], real[:, 1], s=3, alpha=0.3, color="tab:blue", label="real")
        ax.scatter(gen[:, 0], gen[:, 1], s=3, alpha=0.5, color="tab:red", label=name)
        for mx, my in GRID_MEANS:
            ax.plot(mx + 3 * GRID_STD * np.cos(t), my + 3 * GRID_STD * np.sin(t), color="black", lw=0.6)
        # Fixed axes around the grid, widened for sets that drift off it (ignoring the wildest 1%).
        lim = max(5.5, 1.05 * float(np.percentile(np.abs(gen), 99))) if len(gen) else 5.5
        ax.set(aspect="equal", title=name, xlim=(-lim, lim), ylim=(-lim, lim))
        ax.legend(loc="upper right", markerscale=4, fontsize=8)
    for ax in axes[len(sets) :]:
        ax.set_axis_off()
    return _save_figure(storage, rel, fig)


# ------------------------------------------------------------------- reports
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{float(v):.4g}"
    return str(v)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, str, bool, np.integer, np.floating))


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """Markdown table(s): one row per set, one column per scalar metric.

    Nested dicts (``{set: {metric: value}}``) become rows; top-level scalars go
    to a metric/value table; lists (e.g. per-mode counts) are left to metrics.json.
    """
    sets = {k: v for k, v in metrics.items() if isinstance(v, Mapping)}
    flat = {k: v for k, v in metrics.items() if _is_scalar(v)}
    parts = []
    if sets:
        cols: list[str] = []
        for row in sets.values():
            cols += [k for k, v in row.items() if _is_scalar(v) and k not in cols]
        lines = ["| set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |" for name, row in sets.items()]
        parts.append("\n".join(lines))
    if flat:
        lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in flat.items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "_no metrics_"


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become null: metrics.json stays strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def protocol_markdown(
    n: int,
    n_test: int,
    n_train: int,
    extractor: Mapping[str, Any] | None,
    overlap: int = 0,
    protocol: str = "split",
    n_diagnostic: int | None = None,
) -> str:
    """The evaluation protocol in words: which data each role uses, and which extractor and why.

    ``protocol`` is ``eval.protocol``: ``split`` (reference and reconstructions are halves of the
    held-out rows, ``n`` each) or ``standard`` (the whole test split, ``n_test`` images, is the
    reference; headline sets have ``n`` images, diagnostic sets ``n_diagnostic``). The first line
    names the protocol, so a reader knows at once whether a figure may sit next to a published one.
    ``extractor`` is :attr:`vegan.metrics.fidelity.FeatureSpace.info` (None for vector data);
    ``overlap`` counts held-out examples that are also training examples (a dataset without a
    separate test split), which the text then states.
    """
    if protocol == "standard":
        n_diag = n if n_diagnostic is None else n_diagnostic
        lines = [
            f"- **Protocol: standard.** {n} generated images per headline set (`ae-ot`, `ae-ot-gan`) against all "
            f"{n_test} test images; the `floor` set, {n} training images against the same reference, is what "
            "real data scores with these features.",
            f"- Diagnostic sets (`reconstructions` of training images 0 to {n_diag - 1}, `gaussian-fit`, "
            f"`gaussian-noise`, `model-sampler`): {n_diag} images each"
            + (" (fewer images bias FID upwards: compare them with each other, not with the headline sets)."
               if n_diag < n else "."),
        ]  # fmt: skip
    else:
        lines = [
            "- **Protocol: split** (not the published protocol: never compare these figures with published ones; "
            "`eval.protocol: standard` is).",
            f"- Reference: held-out (test split) examples 0 to {n - 1} ({n} of the {n_test} loaded).",
            f"- `reconstructions`: decode(encode(x)) of held-out examples {n} to {2 * n - 1}: never trained on, "
            "and not the reference images.",
            f"- Every generated set has {n} examples.",
        ]
    if overlap:
        lines.append(
            f"- **Caution:** {overlap} of the {2 * n} held-out examples are also training examples: this dataset "
            "has no separate test split and all of it was used for training, so reconstructions and the "
            "reference are not truly held out."
        )
    if extractor is None:
        lines.append("- Vector data: mode coverage and sample quality on the grid; no feature extractor.")
    else:
        lines.append(f"- Feature extractor: `{extractor['extractor']}` ({extractor.get('extractor_reason', '')}).")
        if "precision" in extractor:
            lines.append(f"- Extractor arithmetic: {extractor['precision']} ({extractor.get('precision_reason', '')}).")
        if "classifier_task" in extractor:
            task = "class labels" if extractor["classifier_task"] == "labels" else "rotation prediction, no labels"
            seen = (
                "**including the held-out examples** (no other training data exists)"
                if extractor.get("classifier_saw_held_out") else "none of them held-out examples"
            )  # fmt: skip
            lines.append(
                f"- It learned from {extractor['classifier_train_examples']} examples of the training split "
                f"(of {n_train}; {task}), {seen}; a tenth of them, held back from its training, "
                f"measure its accuracy: {extractor['classifier_accuracy']:.3f}."
            )
    return "\n".join(lines)


def write_report(
    storage: Storage,
    metrics: Mapping[str, Any],
    figures: Mapping[str, str],
    extra_sections: Mapping[str, str] | None = None,
    title: str = "Evaluation report",
    about: Mapping[str, Any] | None = None,
) -> str:
    """Write ``metrics.json`` and ``report.md`` (metric table, figures by relative path); return the markdown.

    ``metrics.json`` is ``{**about, "sets": metrics}``: ``about`` holds what every set shares
    (the eval stage puts the protocol name and the reference count there), so a reader of the
    file alone knows how its figures were made.
    """
    storage.write_json("metrics.json", _json_safe({**(about or {}), "sets": dict(metrics)}))
    parts = [f"# {title}", "## Metrics", metrics_markdown(metrics)]
    if figures:
        parts.append("## Figures")
        parts += [f"### {name}\n\n![{name}]({path})" for name, path in figures.items()]
    for heading, body in (extra_sections or {}).items():
        parts += [f"## {heading}", body.strip()]
    text = "\n\n".join(parts) + "\n"
    storage.write_text("report.md", text)
    return text
