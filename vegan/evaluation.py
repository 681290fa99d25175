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
dataset given by URL has no test split: :func:`held_out` then holds out the
examples beyond the training ``limit`` (and says so in the report when there are none).
That is ``eval.protocol: split``, the default: it fits any test split, and its figures
are never put next to published ones.

``eval.protocol: standard`` is the field's yardstick (:func:`standard_roles`): the
*whole* test split is the reference (10,000 MNIST test images), ``ae-ot`` /
``ae-ot-gan`` have ``eval.n_samples`` images, the diagnostic sets
``eval.diagnostic_samples``, ``reconstructions`` are of training images (the test
images are all reference), and the ``floor`` set, ``eval.n_samples`` training images,
scores real data with the same features: no sampler can be expected below it.

Nothing the size of the dataset passes through this process: every set is a row
source (:mod:`vegan.metrics.sources`) made chunk by chunk where its features are
extracted (on the run's Dask workers when ``run.client`` is set), held-out rows are
told apart from training rows by row digests computed chunk by chunk, and the
classifier behind the ``domain`` / ``selfsup`` features reads only its subsample.
The driver holds features (``n x feature_dim``), O(n) codes and O(N) labels.

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

import hashlib
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from vegan.data.base import ChunkedRows
from vegan.metrics.sources import (
    DatasetRows,
    Decoded,
    Reconstructed,
    RowSource,
    ZarrCodes,
    digest,
    gather_rows,
    map_chunks,
)

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


# ------------------------------------------------------------ chunk helpers
def _row_digests(x: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in np.ascontiguousarray(x)]


def _digests_task(data: ChunkedRows, rows: np.ndarray) -> list[bytes]:
    return _row_digests(gather_rows(data, rows))


def row_digests(data: ChunkedRows, rows: np.ndarray, client=None) -> list[bytes]:
    """A 16-byte digest per row ``rows`` of ``data`` (raw stored rows), hashed chunk by chunk."""
    rows = np.asarray(rows, dtype=np.int64)
    groups = np.split(rows, np.flatnonzero(np.diff(rows // data.chunk_rows)) + 1) if len(rows) else []
    return [d for part in map_chunks(client, _digests_task, data, groups) for d in part]


def _matches_task(data: ChunkedRows, c: int, wanted: set[bytes]) -> list[tuple[int, bytes]]:
    lo, _ = data.chunk_bounds(c)
    return [(lo + i, d) for i, d in enumerate(_row_digests(data.read_chunk(c))) if d in wanted]


def rows_matching(data: ChunkedRows, digests: list[bytes], client=None) -> dict[bytes, list[int]]:
    """``{digest: rows of data with that digest}`` for the given digests: one pass over ``data``'s
    chunks (each a Dask task with a client) that returns only the matches."""
    found: dict[bytes, list[int]] = {}
    for part in map_chunks(client, _matches_task, data, list(range(data.n_chunks)), set(digests)):
        for row, d in part:
            found.setdefault(d, []).append(row)
    return found


# ---------------------------------------------------------------- held out
@dataclass(frozen=True)
class HeldOut:
    """The held-out rows evaluation uses, and how they relate to the training rows."""

    test: ChunkedRows  # the test split (a lazy Zarr dataset stays lazy)
    rows: np.ndarray  # rows of ``test``: reference ``rows[:n]``, reconstructed ``rows[n:2n]``
    n_test: int  # held-out examples available (what the report calls "loaded")
    overlap: int  # held-out rows used that equal a training row
    train_exclude: np.ndarray  # training rows equal to a held-out row used (kept from the extractor)

    @property
    def n(self) -> int:
        return len(self.rows) // 2

    @cached_property
    def reference(self) -> DatasetRows:
        return DatasetRows(self.test, self.rows[: self.n])

    @cached_property
    def reconstructed(self) -> DatasetRows:
        return DatasetRows(self.test, self.rows[self.n :])


def held_out(train: ChunkedRows, data_cfg: "DataConfig", n_samples: int, client=None) -> HeldOut:
    """Held-out examples for evaluation: the test split, less any example that is also in ``train``.

    Named datasets have a real test split and lose nothing. A dataset given by URL (image
    folder, .npz, Zarr) has no separate test split, so its "test" rows are the training rows:
    the examples beyond the training ``limit`` are then the held-out ones. Only when fewer than
    four are left (all data was used for training) does evaluation fall back to training
    examples, and ``report.md`` says so. Rows are compared by digest, chunk by chunk: the
    training data is read once and never held.
    """
    from vegan.data import DATASETS, load_dataset

    test = load_dataset(data_cfg.model_copy(update={"split": "test", "limit": len(train) + 2 * n_samples}))
    # Without a test split the first len(train) "test" rows are the training rows themselves.
    first = 0 if data_cfg.name in DATASETS else min(len(train), len(test))
    candidates = np.arange(first, len(test))
    digests = row_digests(test, candidates, client)
    found = rows_matching(train, digests, client) if digests else {}
    fresh = candidates[np.asarray([d not in found for d in digests], dtype=bool)] if found else candidates
    rows = fresh if len(fresh) >= 4 else np.arange(len(test))
    n = held_out_split(len(rows), n_samples).n
    used = rows[: 2 * n]
    if rows is fresh:  # no row of ``fresh`` equals a training row
        return HeldOut(test, used, len(rows), 0, np.empty(0, dtype=np.int64))
    used_digests = row_digests(test, used, client)
    found = rows_matching(train, used_digests, client)
    overlap = sum(d in found for d in used_digests)
    exclude = np.unique(np.asarray([r for d in set(used_digests) for r in found.get(d, [])], dtype=np.int64))
    return HeldOut(test, used, len(rows), overlap, exclude)


@dataclass(frozen=True)
class EvalRoles:
    """Which rows play which part in one evaluation, under ``protocol`` (split or standard)."""

    protocol: str
    reference: DatasetRows  # compared against: FID reference, precision/recall manifold
    reconstructed: DatasetRows  # encoded and decoded into the ``reconstructions`` set
    n_headline: int  # images of ae-ot / ae-ot-gan; diagnostic sets have len(reconstructed)
    n_test: int  # held-out examples available (what the report calls "loaded")
    overlap: int = 0  # held-out rows used that equal a training row
    train_exclude: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    floor: DatasetRows | None = None  # real training images scored like a generated set (standard only)

    @property
    def n_reference(self) -> int:
        return len(self.reference)

    def describe(self, n_train: int, extractor_info: dict | None) -> str:
        """The protocol in words for ``report.md`` (its first line names the protocol)."""
        from vegan.report import protocol_markdown

        return protocol_markdown(self.n_headline, self.n_test, n_train, extractor_info, self.overlap,
                                 protocol=self.protocol, n_diagnostic=len(self.reconstructed))  # fmt: skip


def split_roles(held: HeldOut) -> EvalRoles:
    """``eval.protocol: split``: the reference and the reconstructed images are two halves of the held-out rows."""
    return EvalRoles("split", held.reference, held.reconstructed, held.n, held.n_test, held.overlap,
                     held.train_exclude)  # fmt: skip


def standard_roles(train: ChunkedRows, data_cfg: "DataConfig", eval_cfg: "EvalConfig") -> EvalRoles:
    """``eval.protocol: standard``: the whole test split is the reference; reconstructions are of the first
    ``diagnostic_samples`` training images and the ``floor`` set is the first ``n_samples`` (the same images
    first, so reconstructions minus floor is what the autoencoder loses).

    Needs a named dataset with a real test split (a dataset given by URL has none) and enough training rows."""
    from vegan.data import DATASETS, load_dataset

    if data_cfg.name not in DATASETS:
        raise ValueError(
            f"eval.protocol standard needs a named dataset with a test split ({', '.join(sorted(DATASETS))}); "
            f"{data_cfg.name!r} has none: use eval.protocol split"
        )
    test = load_dataset(data_cfg.model_copy(update={"split": "test", "limit": None}))
    n, n_diag = eval_cfg.n_samples, eval_cfg.diagnostic_samples or eval_cfg.n_samples
    if len(train) < max(n, n_diag):
        raise ValueError(
            f"eval.protocol standard: the floor set needs eval.n_samples={n} training images and the "
            f"reconstructions eval.diagnostic_samples={n_diag}; the run trains on {len(train)} (data.limit)"
        )
    return EvalRoles(
        "standard", DatasetRows(test, np.arange(len(test))), DatasetRows(train, np.arange(n_diag)), n, len(test),
        floor=DatasetRows(train, np.arange(n)),
    )  # fmt: skip


def eval_roles(train: ChunkedRows, data_cfg: "DataConfig", eval_cfg: "EvalConfig", client=None) -> EvalRoles:
    """The roles ``eval.protocol`` asks for."""
    if eval_cfg.protocol == "standard":
        return standard_roles(train, data_cfg, eval_cfg)
    return split_roles(held_out(train, data_cfg, eval_cfg.n_samples, client))


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

    from vegan.metrics import INCEPTION_TF_OFFLINE, InceptionWeightsError, choose_extractor, default_inception_path

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


# -------------------------------------------------------------- the sets
def _gaussian_fit(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(mean, cov, size=n).astype(np.float32)


def _sum_task(codes: ZarrCodes, span: tuple[int, int]) -> tuple[int, np.ndarray]:
    y = codes.rows(*span).astype(np.float64)
    return len(y), y.sum(0)


def _scatter_task(codes: ZarrCodes, span: tuple[int, int], mean: np.ndarray) -> np.ndarray:
    y = codes.rows(*span).astype(np.float64) - mean
    return y.T @ y


def code_moments(codes: ZarrCodes, client=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov`` convention, float64) of the codes, in two passes over their chunks
    (Dask tasks with a client): O(d^2) floats come back, never the codes."""
    n = len(codes)
    if n < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 codes, got {n}")
    rows = codes.chunk_rows
    spans = [(lo, min(n, lo + rows)) for lo in range(0, n, rows)]
    parts = map_chunks(client, _sum_task, codes, spans)
    mean = sum(p[1] for p in parts) / sum(p[0] for p in parts)
    cov = sum(map_chunks(client, _scatter_task, codes, spans, mean)) / (n - 1)
    return mean, cov


def stage_codes(run: "Run", stage: str, limit: int | None = None) -> ZarrCodes:
    """The codes of the finished ``latents`` or ``generate`` stage, read lazily from its Zarr store."""
    from vegan.latents import LatentError

    run.require(stage)
    codes = ZarrCodes(run.dir(stage).url, "codes", run.storage.storage_options, limit=limit)
    if codes.dim != run.cfg.ae.latent_dim:
        raise LatentError(f"{stage} codes have dimension {codes.dim}, the decoder expects {run.cfg.ae.latent_dim}")
    return codes


def sample_sets(run: "Run", images: DatasetRows, n_headline: int | None = None) -> dict[str, RowSource]:
    """Every set of generated data this run can produce (those ``eval.sets`` names), as row sources:
    ``ae-ot`` / ``ae-ot-gan`` of ``n_headline`` examples (default ``len(images)``), the diagnostic sets of
    ``len(images)``; ``reconstructions`` are of ``images``, which must not be the reference.

    Codes are O(n x latent_dim): generated codes stay in the generate stage's Zarr store and are read
    by each chunk; Gaussian and prior codes are drawn here (a fixed sequence for a seed)."""
    cfg, keys = run.cfg, run.keys
    n, seed, shape = len(images), cfg.eval.seed, tuple(images.shape)
    n_gen = n if n_headline is None else n_headline
    makers: dict[str, Callable[[], RowSource]] = {}
    if run.has_encoder():
        model = run.model
        makers["reconstructions"] = lambda: Reconstructed(
            model, images, digest("reconstructions", keys["ae"], images.key)
        )
        makers["ae-ot"] = lambda: Decoded(
            model.decoder, stage_codes(run, "generate", n_gen), shape,
            digest("ae-ot", keys["ae"], keys["generate"], n_gen),
        )  # fmt: skip
        if cfg.gan.enabled and cfg.gan.steps > 0:
            makers["ae-ot-gan"] = lambda: Decoded(
                run.generator,
                stage_codes(run, "generate", n_gen),
                shape,
                digest("ae-ot-gan", keys["gan"], keys["generate"], n_gen),
            )
        makers["gaussian-fit"] = lambda: Decoded(
            model.decoder, _gaussian_fit(*code_moments(stage_codes(run, "latents"), run.client), n, seed), shape,
            digest("gaussian-fit", keys["ae"], keys["latents"], n, seed),
        )  # fmt: skip

        def noise() -> Decoded:
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(n, cfg.ae.latent_dim, generator=g)
            return Decoded(model.decoder, z, shape, digest("gaussian-noise", keys["ae"], n, seed))

        makers["gaussian-noise"] = noise
    if cfg.ae.model != "ae":

        def model_sampler() -> Decoded:  # the draws of model.sample in batches of 512, decoded by chunk
            model, g = run.model, torch.Generator().manual_seed(seed)
            z = torch.cat([model.prior_sample(min(512, n - i), g) for i in range(0, n, 512)])
            return Decoded(model, z, shape, digest("model-sampler", keys["ae"], n, seed), method="decode")

        makers["model-sampler"] = model_sampler
    if cfg.eval.sets is not None:
        unknown = sorted(set(cfg.eval.sets) - set(makers))
        if unknown:
            raise ValueError(f"eval.sets: this run cannot make {unknown}; it makes {sorted(makers)}")
        makers = {k: v for k, v in makers.items() if k in cfg.eval.sets}
    return {name: make() for name, make in makers.items()}


def _all_rows(source: RowSource) -> torch.Tensor:
    return source.rows(0, len(source))


# ---------------------------------------------------------- nearest images
def _nearest_task(data: ChunkedRows, c: int, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from vegan.data.base import to_float
    from vegan.report import _nearest

    lo, _ = data.chunk_bounds(c)
    dist, idx = _nearest(queries, to_float(data.read_chunk(c)).flatten(1), k)
    return dist, idx + lo


def nearest_training_images(train: ChunkedRows, queries: torch.Tensor, k: int, client=None) -> torch.Tensor:
    """The ``k`` training images nearest (pixel space) to each query, ``(n, k, C, H, W)``: each chunk
    returns its own k best, the driver merges them and reads the winners."""
    q = queries.flatten(1).float()
    parts = map_chunks(client, _nearest_task, train, list(range(train.n_chunks)), q, k)
    dist = torch.cat([p[0] for p in parts], 1)
    idx = torch.cat([p[1] for p in parts], 1)
    best = idx.gather(1, dist.topk(min(k, dist.shape[1]), dim=1, largest=False).indices)
    from vegan.data.base import to_float

    rows = to_float(gather_rows(train, best.flatten().numpy()))
    return rows.unflatten(0, tuple(best.shape))


# ---------------------------------------------------------------- the stage
GRID_IMAGES = 100
"""Images in each set's sample grid (10 x 10, the papers' figure)."""


def evaluate_run(run: "Run") -> dict[str, Any]:
    from vegan import report
    from vegan.metrics import TrainingRows, evaluate_sets, feature_space, grid_metrics

    cfg, client = run.cfg, run.client
    out = run.dir("eval")
    train = run.dataset
    roles = eval_roles(train, cfg.data, cfg.eval, client)
    reference = roles.reference
    sets = sample_sets(run, roles.reconstructed, roles.n_headline)
    if roles.floor is not None:
        sets = {"floor": roles.floor, **sets}
    figures: dict[str, str] = {}
    extra: dict[str, str] = {}

    if train.is_image:
        check_extractor(cfg.data, cfg.eval, train.labels is not None)  # a clear error before any work
        cache = run.storage.sub("cache")
        fit = TrainingRows(train, train.labels, roles.train_exclude)
        if len(fit) < 2:  # every training example is held out too: nothing disjoint to train on
            fit = TrainingRows(train, train.labels)
        space = feature_space(cfg.eval, fit, cache=cache, client=client)
        space.info["classifier_saw_held_out"] = len(fit) == len(train) and roles.overlap > 0
        metrics = evaluate_sets(
            reference, sets, cfg.eval, cache=cache, space=space, progress=run.progress, client=client,
            resources=run.resources("eval"),
        )  # fmt: skip
        for name, source in {"real": reference, **sets}.items():
            rel = f"samples-{name}.png"
            report.save_image_grid(out, rel, source.rows(0, min(GRID_IMAGES, len(source))), nrow=10)
            figures[f"samples: {name}"] = rel
        if "ae-ot" in sets:
            queries = sets["ae-ot"].rows(0, 8)
            report.neighbour_grid(out, "nearest-neighbours.png", queries,
                                  nearest_training_images(train, queries, 5, client))  # fmt: skip
            figures["AE-OT samples next to their nearest training images"] = "nearest-neighbours.png"
        protocol = roles.describe(len(train), space.info)
        log.info("evaluation protocol:\n%s", protocol)
    else:  # vector data (the 2-D grid): O(n x 2) floats
        real = _all_rows(reference).numpy()
        metrics = {"real": grid_metrics(real)}
        vectors = {name: _all_rows(v).numpy() for name, v in sets.items()}
        metrics.update({name: grid_metrics(v) for name, v in vectors.items()})
        report.plot_grid2d(out, "grid2d.png", real, vectors)
        figures["2-D grid: real and generated"] = "grid2d.png"
        protocol = roles.describe(len(train), None)
    extra["Evaluation protocol"] = protocol

    if run.has_encoder():
        latents = stage_codes(run, "latents")
        some = report._subsample(range(len(latents)), 5000)  # the PCA figure's points, read by index
        labels = None if train.labels is None else train.labels[torch.from_numpy(some)]
        generated = stage_codes(run, "generate", roles.n_headline)
        report.plot_codes_pca(out, "codes-pca.png", latents.take(some), generated.rows(0, len(generated)),
                              labels=labels)  # fmt: skip
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
    report.write_report(out, metrics, figures, extra,
                        about={"protocol": roles.protocol, "n_reference": roles.n_reference})  # fmt: skip
    return {
        "metrics": metrics,
        "report": out.uri("report.md"),
        "protocol": roles.protocol,
        "n_reference": roles.n_reference,
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
    from vegan.metrics import TrainingRows, evaluate_sets, feature_space, grid_metrics

    limit = None if eval_cfg.protocol == "standard" else eval_cfg.n_samples  # standard: the whole test split
    test = load_dataset(data_cfg.model_copy(update={"split": "test", "limit": limit}))
    reference = DatasetRows(test, np.arange(len(test)))
    spaces: list = []  # built on the first call: the extractor trains on the training split

    def evaluate_fn(sets: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        if not test.is_image:
            return {name: grid_metrics(np.asarray(v.detach().numpy())) for name, v in sets.items()}
        if not spaces:
            train = load_dataset(data_cfg.model_copy(update={"split": "train"}))
            check_extractor(data_cfg, eval_cfg, train.labels is not None)
            fit = TrainingRows(train, train.labels)
            spaces.append(feature_space(eval_cfg, fit, train_hash=train.content_hash(), cache=cache))
        return evaluate_sets(
            reference, {k: v.detach().clamp(0, 1) for k, v in sets.items()}, eval_cfg, cache=cache,
            space=spaces[0], progress=progress,
        )  # fmt: skip

    return evaluate_fn
