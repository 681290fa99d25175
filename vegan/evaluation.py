"""The evaluation stage: compare AE-OT samples with the baselines a reader expects.

Which data plays which role (so that no figure is flattered by data the
networks have seen):

- the *feature extractor* of the ``domain`` / ``selfsup`` metrics is trained on
  the training split only (the data the autoencoder was trained on);
- the *reference* set is the first ``n`` examples of the held-out (test) split;
- ``reconstructions`` are of the *next* ``n`` held-out examples: never trained
  on, and not the reference images either, so a reconstruction cannot score
  well by being close to the very image it is compared with.

``n = min(eval.n_samples, len(test split) // 2)``; every generated set has ``n``
examples. :func:`held_out_split` makes the split; ``report.md`` states it. A
dataset given by URL has no test split: :func:`held_out_data` then holds out the
examples beyond the training ``limit`` (and says so in the report when there are none).

Sets compared against the reference:

- ``reconstructions``: decode(encode(x)), the ceiling any latent sampler can reach;
- ``ae-ot``: decoded codes from the OT generation stage;
- ``ae-ot-gan``: the same codes through the fine-tuned generator (when it ran);
- ``gaussian-fit``: decoded samples of a Gaussian fitted to the training codes;
- ``gaussian-noise``: decoded N(0, I) noise;
- ``model-sampler``: the cookbook model's own sampler (VAE/WAE/AAE prior, WGAN-GP).

Writes ``metrics.json``, sample grids, plots and ``report.md`` under ``eval/{key}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from vegan.config import DataConfig, EvalConfig
    from vegan.stages.base import StageContext as Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutSplit:
    """Rows of the held-out (test) split by role; the two index sets never overlap."""

    reference: torch.Tensor  # compared against: FID reference, precision/recall manifold
    reconstructed: torch.Tensor  # encoded and decoded into the ``reconstructions`` set

    @property
    def n(self) -> int:
        return len(self.reference)


def held_out_data(train: torch.Tensor, data_cfg: "DataConfig", n_samples: int) -> torch.Tensor:
    """Held-out examples for evaluation: the test split, less any example that is also in ``train``.

    Named datasets have a real test split and lose nothing. A dataset given by URL (image
    folder, .npz, Zarr) has no separate test split, so its "test" rows are the training rows:
    the examples beyond the training ``limit`` are then the held-out ones. Only when none
    are left (all data was used for training) does evaluation fall back to training
    examples, and ``report.md`` says so.
    """
    from vegan.data import load_dataset

    test = load_dataset(data_cfg.model_copy(update={"split": "test", "limit": len(train) + 2 * n_samples})).data
    fresh, _, _ = disjoint_from(test, None, train)
    return fresh if len(fresh) >= 4 else test


def held_out_split(n_test: int, n_samples: int) -> HeldOutSplit:
    """First ``n`` held-out rows as the reference, the next ``n`` to reconstruct, with
    ``n = min(n_samples, n_test // 2)``."""
    n = min(n_samples, n_test // 2)
    if n < 2:
        raise ValueError(
            f"the held-out split has {n_test} examples; evaluation needs at least 4 "
            "(half as the reference, half to reconstruct)"
        )
    return HeldOutSplit(torch.arange(0, n), torch.arange(n, 2 * n))


def _row_keys(x: torch.Tensor) -> list[bytes]:
    return [row.tobytes() for row in x.detach().cpu().contiguous().flatten(1).numpy()]


def disjoint_from(
    x: torch.Tensor, labels: torch.Tensor | None, exclude: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The rows of ``x`` (and ``labels``) equal to no row of ``exclude``, and how many were dropped.

    Named datasets have a real test split, so nothing is dropped; a dataset given by URL (image
    folder, .npz) has no separate test split, and this keeps the extractor from training on
    the reference images all the same.
    """
    held = set(_row_keys(exclude))
    keep = torch.tensor([k not in held for k in _row_keys(x)], dtype=torch.bool)
    dropped = int((~keep).sum())
    if dropped == 0:
        return x, labels, 0
    return x[keep], (None if labels is None else labels[keep]), dropped


@dataclass(frozen=True)
class ExtractorChoice:
    name: str  # the registered extractor, or "grid-metrics" for vector data
    reason: str


def check_extractor(
    data_cfg: "DataConfig", eval_cfg: "EvalConfig", has_labels: bool, is_image: bool = True
) -> ExtractorChoice:
    """The extractor evaluation will use for this data, and why; a ``ValueError`` naming the
    problem when it cannot work (``domain`` on a dataset without labels, an unknown name, a
    missing TF-Inception weights file). Cheap: meant for a pre-flight check before any stage runs.
    """
    from pathlib import Path

    from vegan.metrics.extractors import (
        INCEPTION_TF_OFFLINE,
        InceptionWeightsError,
        choose_extractor,
        default_inception_path,
    )

    if not is_image:
        return ExtractorChoice("grid-metrics", "vector data: mode coverage and quality on the grid, no extractor")
    try:
        name, reason = choose_extractor(eval_cfg.extractor, has_labels)
        if name == INCEPTION_TF_OFFLINE:
            path = Path(eval_cfg.inception_path).expanduser() if eval_cfg.inception_path else default_inception_path()
            if not path.is_file():
                raise ValueError(f"Inception weights file not found: {path} (set eval.inception_path)")
    except (ValueError, InceptionWeightsError) as exc:
        raise ValueError(f"dataset {data_cfg.name!r}: {exc}") from None
    return ExtractorChoice(name, reason)


@torch.no_grad()
def _decode(decoder: torch.nn.Module, codes: np.ndarray | torch.Tensor, batch: int = 512) -> torch.Tensor:
    z = torch.as_tensor(codes, dtype=torch.float32)
    return torch.cat([decoder(z[i : i + batch]) for i in range(0, len(z), batch)]) if len(z) else z


def _gaussian_fit(codes: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(codes.mean(0), np.cov(codes, rowvar=False), size=n).astype(np.float32)


def sample_sets(run: "Run", held_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every set of generated data this run can produce, as many examples as ``held_out``;
    ``reconstructions`` are of ``held_out``, which must not be the reference images."""
    cfg, model = run.cfg, run.model
    n, seed = len(held_out), cfg.eval.seed
    sets: dict[str, torch.Tensor] = {}
    if run.has_encoder():
        with torch.no_grad():
            sets["reconstructions"] = torch.cat(
                [model.decode(model.encode(held_out[i : i + 512])) for i in range(0, n, 512)]
            )
        gen = run.generated_codes[:n]
        sets["ae-ot"] = _decode(model.decoder, gen)
        if cfg.gan.enabled and cfg.gan.steps > 0:
            sets["ae-ot-gan"] = _decode(run.generator, gen)
        sets["gaussian-fit"] = _decode(model.decoder, _gaussian_fit(run.codes, n, seed))
        g = torch.Generator().manual_seed(seed)
        sets["gaussian-noise"] = _decode(model.decoder, torch.randn(n, cfg.ae.latent_dim, generator=g))
    if cfg.ae.model != "ae":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            sets["model-sampler"] = torch.cat([model.sample(min(512, n - i), generator=g) for i in range(0, n, 512)])
    if cfg.eval.sets is not None:
        unknown = sorted(set(cfg.eval.sets) - set(sets))
        if unknown:
            raise ValueError(f"eval.sets: this run cannot make {unknown}; it makes {sorted(sets)}")
        sets = {k: v for k, v in sets.items() if k in cfg.eval.sets}
    if not run.dataset.is_image:  # vector data is not squashed into [0, 1]
        return sets
    return {k: v.clamp(0, 1) for k, v in sets.items()}


def evaluate_run(run: "Run") -> dict[str, Any]:
    from vegan import report
    from vegan.metrics import evaluate_sets, feature_space, grid_metrics, tensor_hash

    cfg = run.cfg
    out = run.dir("eval")
    train = run.dataset
    test = held_out_data(train.data, cfg.data, cfg.eval.n_samples)
    split = held_out_split(len(test), cfg.eval.n_samples)
    reference = test[split.reference]
    sets = sample_sets(run, test[split.reconstructed])
    held_out = test[torch.cat([split.reference, split.reconstructed])]
    overlap = len(held_out) - len(disjoint_from(held_out, None, train.data)[0])
    figures: dict[str, str] = {}
    extra: dict[str, str] = {}

    if train.is_image:
        check_extractor(cfg.data, cfg.eval, train.labels is not None)  # a clear error before any work
        cache = run.storage.sub("cache")
        x_fit, y_fit, _ = disjoint_from(train.data, train.labels, held_out)
        if len(x_fit) < 2:  # every training example is held out too: nothing disjoint to train on
            x_fit, y_fit = train.data, train.labels
        space = feature_space(cfg.eval, x_fit, y_fit, tensor_hash(x_fit, y_fit), cache)
        space.info["classifier_saw_held_out"] = len(x_fit) == len(train) and overlap > 0
        metrics = evaluate_sets(
            reference, sets, cfg.eval, cache=cache, real_hash=tensor_hash(reference), space=space,
            progress=run.progress,
        )  # fmt: skip
        for name, images in {"real": reference, **sets}.items():
            rel = f"samples-{name}.png"
            report.save_image_grid(out, rel, images[:64], nrow=8)
            figures[f"samples: {name}"] = rel
        if "ae-ot" in sets:
            report.nearest_neighbour_grid(out, "nearest-neighbours.png", sets["ae-ot"][:8], train.data, k=5)
            figures["AE-OT samples next to their nearest training images"] = "nearest-neighbours.png"
        protocol = report.protocol_markdown(split.n, len(test), len(train), space.info, overlap)
        log.info("evaluation protocol:\n%s", protocol)
    else:
        real = reference.numpy()
        metrics = {"real": grid_metrics(real)}
        metrics.update({name: grid_metrics(v.numpy()) for name, v in sets.items()})
        report.plot_grid2d(out, "grid2d.png", real, {k: v.numpy() for k, v in sets.items()})
        figures["2-D grid: real and generated"] = "grid2d.png"
        protocol = report.protocol_markdown(split.n, len(test), len(train), None, overlap)
    extra["Evaluation protocol"] = protocol

    if run.has_encoder():
        report.plot_codes_pca(out, "codes-pca.png", run.codes, run.generated_codes[: split.n], labels=train.labels)
        figures["codes (PCA) with generated codes"] = "codes-pca.png"
        ot_info = run.manifest.done_info("ot")
        history = _ot_history(run)
        if history:
            report.plot_ot_history(out, "ot-convergence.png", history)
            figures["OT convergence"] = "ot-convergence.png"
        gen_info = run.manifest.done_info("generate")
        extra["OT solve"] = (
            f"converged: {ot_info.get('converged')}, iterations: {ot_info.get('iterations')}, "
            f"marginal error: {ot_info.get('marginal_error')}, generation rejection rate: "
            f"{gen_info.get('rejection_rate', float('nan')):.3f}"
        )
    extra["Run"] = f"preset/name: {cfg.name}; dataset: {cfg.data.name}; model: {cfg.ae.model}; keys: {run.keys}"
    report.write_report(out, metrics, figures, extra)
    return {
        "metrics": metrics,
        "report": out.uri("report.md"),
        "n_reference": split.n,
        "extractor": space.info.get("extractor") if train.is_image else "grid-metrics",
    }


def _ot_history(run: "Run") -> list[dict]:
    from vegan.ot import load_result

    try:
        return list(load_result(run.dir("ot")).history)
    except FileNotFoundError:
        return []


def make_evaluate_fn(data_cfg, eval_cfg, cache=None, progress: bool = False):
    """``{name: samples} -> {name: metrics}`` against the held-out split of ``data_cfg``.

    Images get :func:`vegan.metrics.evaluate_sets` with the extractor trained on the
    training split (as in the pipeline); vector data (the 2-D grid) gets
    :func:`vegan.metrics.grid_metrics`. Used by the compare flow so every model is
    scored by exactly the same code as the pipeline's eval stage.
    """
    from vegan.data import load_dataset
    from vegan.metrics import evaluate_sets, feature_space, grid_metrics, tensor_hash

    test = load_dataset(data_cfg.model_copy(update={"split": "test", "limit": eval_cfg.n_samples}))
    spaces: list = []  # built on the first call: the extractor trains on the training split

    def evaluate_fn(sets: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        if not test.is_image:
            return {name: grid_metrics(np.asarray(v.detach().numpy())) for name, v in sets.items()}
        if not spaces:
            train = load_dataset(data_cfg.model_copy(update={"split": "train"}))
            check_extractor(data_cfg, eval_cfg, train.labels is not None)
            spaces.append(feature_space(eval_cfg, train.data, train.labels, train.content_hash(), cache))
        return evaluate_sets(
            test.data, {k: v.detach().clamp(0, 1) for k, v in sets.items()}, eval_cfg, cache=cache,
            real_hash=tensor_hash(test.data), space=spaces[0], progress=progress,
        )  # fmt: skip

    return evaluate_fn
