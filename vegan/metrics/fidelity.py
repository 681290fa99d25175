"""FID, KID, precision/recall (torch-fidelity) plus density/coverage, with cached reference features.

We extract features ourselves and hand them to torch-fidelity's metric
functions instead of calling ``calculate_metrics`` on datasets, for two reasons:

* torch-fidelity caches reference statistics under a *name* in a local folder;
  ours are cached in a :class:`~vegan.storage.Storage` (local or S3) under the
  content hash of the data and the identity of the extractor weights (and,
  for TF-Inception, a bf16 precision), so changed data, weights or precision
  can never reuse stale statistics. With TF-Inception the features of every
  scored set are cached the same way (``set-features/``), and each set's finished
  chunks are written as they finish: a 10k-image evaluation killed half-way
  resumes at the next unfinished chunk (:func:`cached_features`);
* a set is a tensor or a row source (:mod:`vegan.metrics.sources`: dataset rows,
  decoded codes, reconstructions) whose rows are made chunk by chunk where the
  chunk runs: in this process, or as a Dask task that builds the extractor once
  per worker and returns only features. Images are resized to 299x299 inside
  the extractor, ``batch_size`` at a time, so memory is bounded by a chunk and
  never by the set size, and the driver never holds a set's images.

The extractors are the registered torch-fidelity ones, so the same names also
work with ``torch_fidelity.calculate_metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from vegan.config import EvalConfig
from vegan.device import resolve_device
from vegan.metrics.classifiers import TrainingRows, load_or_train_domain_classifier
from vegan.metrics.inception import load_inception, resolve_precision
from vegan.metrics.prdc import prdc
from vegan.metrics.registry import INCEPTION_TF_OFFLINE, SELFSUP, TRAINED, choose_extractor
from vegan.metrics.runtimes import BackendUnavailable, resolve_backend
from vegan.metrics.sources import RowSource, TensorRows, as_source, head, tensor_hash
from vegan.progress import track
from vegan.storage import Storage

log = logging.getLogger(__name__)

KID_SUBSETS = 100


@dataclass
class FeatureSpace:
    """A ready extractor plus what identifies it in cache keys and on dask workers."""

    extractor: FeatureExtractorBase
    fingerprint: str  # extractor name + weights identity: part of every cache key
    layer: str  # features for FID/KID/precision/recall/density/coverage
    isc_layer: str | None  # class logits, where the extractor has them (Inception Score)
    build_kwargs: dict[str, Any]  # rebuilds the extractor on a dask worker
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,) if self.isc_layer is None else (self.layer, self.isc_layer)


def _isc_layer(cls: type[FeatureExtractorBase]) -> str | None:
    """The extractor's Inception-Score layer, only when it is a layer of class logits."""
    try:
        layer = cls.get_default_feature_layer_for_metric("isc")
    except (ValueError, NotImplementedError, KeyError):
        return None
    return layer if layer and "logits" in layer and layer in cls.get_provided_features_list() else None


def feature_space(
    cfg: EvalConfig,
    train: torch.Tensor | TrainingRows | None = None,
    train_labels: torch.Tensor | None = None,
    train_hash: str | None = None,
    cache: Storage | None = None,
    client=None,
) -> FeatureSpace:
    """Build the extractor named by ``cfg.extractor`` (``auto`` included; see
    :func:`~vegan.metrics.registry.choose_extractor`).

    The trained extractors (``domain``, ``selfsup``) learn from ``train`` (with
    ``train_labels`` for ``domain``): data disjoint from the reference set, normally
    the training split, as a tensor or as :class:`~vegan.metrics.classifiers.TrainingRows`
    (a dataset read by chunk, with its labels; on the workers of ``client``). ``train_hash``
    identifies that content in the classifier cache.
    """
    if isinstance(train, TrainingRows):
        train_labels = train.labels
    name, why = choose_extractor(cfg.extractor, has_labels=train_labels is not None)
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    kwargs: dict[str, Any] = {}
    info: dict[str, Any] = {"extractor": name, "extractor_reason": why}
    if name in TRAINED:
        if train is None:
            raise ValueError(
                f"extractor {name!r} is trained by the pipeline and needs training data disjoint from the "
                "reference set: pass train= (and train_labels= for 'domain')"
            )
        task = "rotation" if name == SELFSUP else "labels"
        if train_hash is None:
            train_hash = train.content_key() if isinstance(train, TrainingRows) else tensor_hash(train, train_labels)
        trained = load_or_train_domain_classifier(
            train, train_labels, train_hash, cache, steps=cfg.domain_steps, max_examples=cfg.domain_max_examples,
            seed=cfg.seed, task=task, client=client,
        )  # fmt: skip
        kwargs["domain_classifier"] = trained.model
        fingerprint = f"{name}-{trained.key}"
        info.update(
            classifier_task=task, classifier_train_examples=min(len(train), cfg.domain_max_examples),
            classifier_accuracy=trained.accuracy, classifier_train_seconds=trained.seconds,
            classifier_cached=trained.cached,
        )  # fmt: skip
    elif name == INCEPTION_TF_OFFLINE:
        if cfg.inception_path:
            kwargs["feature_extractor_weights_path"] = cfg.inception_path
        _, digest = load_inception(cfg.inception_path)  # fails early, naming the path
        device = resolve_device(cfg.device)
        backend, why_backend = resolve_backend(cfg.inception_backend, device)
        precision, why_precision = resolve_precision(cfg.precision, device, backend)
        # matmul resize and channels-last change features by ~1e-6 (rounding only): every path uses them.
        kwargs.update(precision=precision, resize="matmul", channels_last=True, backend=backend)
        info.update(precision=precision, precision_reason=why_precision, backend=backend, backend_reason=why_backend)
        # Other arithmetic, other features: cached apart (torch float32 keeps the key it always had).
        fingerprint = f"{name}-{digest}" + ("" if backend == "torch" else f"-{backend}")
        fingerprint += "" if precision == "float32" and backend == "torch" else f"-{precision}"
    else:  # a torch-fidelity extractor: its name pins its (downloaded) weights
        fingerprint = name
    layer = cls.get_default_feature_layer_for_metric("fid")
    isc_layer = _isc_layer(cls)
    layers = [layer] if isc_layer is None else [layer, isc_layer]
    try:
        extractor = create_feature_extractor(name, layers, cuda=False, verbose=False, **kwargs)
    except BackendUnavailable as exc:
        if cfg.inception_backend != "auto":
            raise
        log.warning("%s; TF-Inception runs on torch instead", exc)
        space = feature_space(cfg.model_copy(update={"inception_backend": "torch"}), cache=cache)
        space.info["backend_reason"] = f"auto: torch because {exc}"
        return space
    except OSError as exc:  # URLError included: torch-fidelity's own extractors download their weights
        raise RuntimeError(
            f"cannot load weights of feature extractor {name!r} ({exc}); without internet use "
            "extractor='inception-tf' (local TorchScript TF-Inception), 'domain' or 'selfsup'"
        ) from exc
    extractor.to(resolve_device(cfg.device))
    build = {"name": name, "layers": layers, "device": cfg.device, **kwargs}
    return FeatureSpace(extractor, fingerprint, layer, isc_layer, build, info)


# ----------------------------------------------------------------- extraction
def to_extractor_input(x: torch.Tensor) -> torch.Tensor:
    """torch-fidelity's input convention: uint8 Bx3xHxW (grayscale repeated); vectors pass as float."""
    if x.ndim == 2:
        return x.float()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1|3, H, W) images or (N, D) vectors, got {tuple(x.shape)}")
    x = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _run_chunk(extractor: FeatureExtractorBase, chunk: torch.Tensor) -> dict[str, torch.Tensor]:
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    with torch.no_grad():
        out = extractor(to_extractor_input(chunk).to(device))
    return {k: v.detach().float().cpu() for k, v in extractor.convert_features_tuple_to_dict(out).items()}


def _features_of(
    source: RowSource, lo: int, hi: int, batch_size: int, extractor: FeatureExtractorBase
) -> dict[str, torch.Tensor]:
    """Features of rows ``[lo, hi)`` of ``source``: the rows are made here (read, decoded), then
    go through the extractor ``batch_size`` at a time. The one per-chunk code path, in this
    process or in a Dask task."""
    x = source.rows(lo, hi)
    parts = [_run_chunk(extractor, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


_WORKER_EXTRACTORS: dict[str, FeatureExtractorBase] = {}


def _worker_extractor(fingerprint: str, build_kwargs: dict) -> FeatureExtractorBase:
    """The extractor, built once per worker process (on the worker's GPU when it has one and the
    config allows)."""
    if fingerprint not in _WORKER_EXTRACTORS:
        kwargs = dict(build_kwargs)
        name, layers, device = kwargs.pop("name"), kwargs.pop("layers"), kwargs.pop("device", "cpu")
        extractor = create_feature_extractor(name, layers, cuda=False, verbose=False, **kwargs)
        _WORKER_EXTRACTORS[fingerprint] = extractor.to(resolve_device(device))
    return _WORKER_EXTRACTORS[fingerprint]


def _features_task(
    source: RowSource, lo: int, hi: int, batch_size: int, fingerprint: str, build_kwargs: dict
) -> dict[str, torch.Tensor]:
    """Dask task: features of one chunk of a set."""
    return _features_of(source, lo, hi, batch_size, _worker_extractor(fingerprint, build_kwargs))


CHUNK_ROWS = 1024
"""Rows per feature-extraction task (rounded to a multiple of the batch size): few enough tasks for
a 10k-image set, small enough that a task's images fit any worker."""


def chunk_bounds(n: int, batch_size: int, chunk_rows: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    step = max(batch_size, chunk_rows // batch_size * batch_size)
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _chunk_features(
    source: RowSource,
    space: FeatureSpace,
    bounds: list[tuple[int, int]],
    batch_size: int,
    client=None,
    progress: bool = False,
    desc: str = "features",
    resources: dict | None = None,
) -> Iterator[tuple[tuple[int, int], dict[str, torch.Tensor]]]:
    """``((lo, hi), features)`` of each chunk in ``bounds``, in order, as each is ready.

    With a dask ``client`` each chunk is a task (a bounded number ahead of the consumer): the
    worker builds the extractor once, makes its rows itself (a source pickles small: a dataset
    URL, codes, a decoder) and returns only features. Without one the same per-chunk function
    runs here.
    """
    bar = track(bounds, desc, enabled=progress, unit="chunk", leave=False)
    if client is None:
        for lo, hi in bar:
            yield (lo, hi), _features_of(source, lo, hi, batch_size, space.extractor)
        return
    from vegan.cluster import Tasks

    tasks = Tasks(client, resources)
    src, build = tasks.scatter([source, space.build_kwargs])  # a list: the dict travels whole

    def start(b: tuple[int, int]):
        return tasks.submit(_features_task, src, b[0], b[1], batch_size, space.fingerprint, build)

    for b, fut in zip(bar, tasks.ordered(start, bounds), strict=True):
        yield b, tasks.gather([fut])[0]


def extract_features(
    x: torch.Tensor | RowSource,
    space: FeatureSpace,
    batch_size: int = 64,
    client=None,
    progress: bool = False,
    desc: str = "features",
    resources: dict | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, torch.Tensor]:
    """Features of ``x`` (float images in [0, 1] or vectors, or a row source) for every layer of
    ``space``, chunk by chunk (:func:`_chunk_features`; on the workers of a dask ``client``), so
    the driver holds ``n x feature_dim`` floats and never the images. Results come back in order.
    """
    source = as_source(x)
    bounds = chunk_bounds(len(source), batch_size, chunk_rows)
    parts = [f for _, f in _chunk_features(source, space, bounds, batch_size, client, progress, desc, resources)]
    return {layer: torch.cat([p[layer] for p in parts]) for layer in space.layers}


def reference_features(
    real: torch.Tensor | RowSource,
    space: FeatureSpace,
    data_hash: str,
    cache: Storage | None = None,
    batch_size: int = 64,
    client=None,
    progress: bool = False,
    resources: dict | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Features of the reference set, cached per (data hash, extractor fingerprint, layer).

    Returns ``(features, loaded_from_cache)``. ``data_hash`` must identify the
    content of ``real``; it is never a dataset name. The fingerprint holds the
    extractor's weights digest, its backend and a non-float32 precision (TF-Inception),
    so the 10k test-set features are computed once per extractor and settings and
    then reused by every run and set sharing the cache. Extraction resumes per chunk
    (see :func:`cached_features`).
    """
    return cached_features(real, space, data_hash, cache, batch_size, client, progress, "reference features",
                           resources=resources, chunk_rows=chunk_rows)  # fmt: skip


def cached_features(
    x: torch.Tensor | RowSource,
    space: FeatureSpace,
    data_hash: str,
    cache: Storage | None,
    batch_size: int = 64,
    client=None,
    progress: bool = False,
    desc: str = "features",
    folder: str = "reference-features",
    resources: dict | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Features of ``x`` cached in ``cache`` under ``{folder}/{data_hash}/{fingerprint}/``; ``(features, hit)``.

    The finished set is one file per layer (``{layer}.pt``). While a set is extracted, each
    finished chunk is written at once, atomically, to ``chunks-{rows}/{lo}-{hi}.pt`` (all
    layers; ``rows`` is the chunk length, so a rerun with another batch size never mixes
    bounds): a process killed part-way resumes at the first chunk without a file, and a
    finished chunk is read back, never recomputed or rewritten. The chunk files are removed
    once the layer files are written.
    """
    source = as_source(x)
    base = f"{folder}/{data_hash}/{space.fingerprint}"
    rels = {layer: f"{base}/{layer}.pt" for layer in space.layers}
    if cache is not None and all(cache.exists(r) for r in rels.values()):
        blobs = {layer: cache.load_torch(r) for layer, r in rels.items()}
        if all(b["n"] == len(source) for b in blobs.values()):
            return {layer: b["features"] for layer, b in blobs.items()}, True
    bounds = chunk_bounds(len(source), batch_size, chunk_rows)
    if cache is None:
        parts = dict(_chunk_features(source, space, bounds, batch_size, client, progress, desc, resources))
    else:
        chunks = f"{base}/chunks-{bounds[0][1] - bounds[0][0]}"
        names = set(cache.listdir(chunks))
        parts = {b: cache.load_torch(f"{chunks}/{_chunk_name(b)}") for b in bounds if _chunk_name(b) in names}
        if parts:
            log.info("%s: resuming after %d of %d finished chunks", desc, len(parts), len(bounds))
        todo = [b for b in bounds if b not in parts]
        for b, feats in _chunk_features(source, space, todo, batch_size, client, progress, desc, resources):
            cache.save_torch(f"{chunks}/{_chunk_name(b)}", feats)
            parts[b] = feats
    feats = {layer: torch.cat([parts[b][layer] for b in bounds]) for layer in space.layers}
    if cache is not None:
        for layer, rel in rels.items():
            cache.save_torch(rel, {"features": feats[layer], "n": len(source), "data_hash": data_hash,
                                   "extractor": space.fingerprint, "layer": layer})  # fmt: skip
        cache.rm(chunks)
    return feats, False


def _chunk_name(bounds: tuple[int, int]) -> str:
    return f"{bounds[0]:010d}-{bounds[1]:010d}.pt"


# -------------------------------------------------------------------- metrics
def compare_features(
    real: dict[str, torch.Tensor], gen: dict[str, torch.Tensor], space: FeatureSpace, cfg: EvalConfig
) -> dict[str, float]:
    """All metrics of one generated set against the reference, from features."""
    fr, fg = real[space.layer].double(), gen[space.layer].double()
    for what, f in (("reference", fr), ("generated", fg)):
        if len(f) <= cfg.pr_k:
            raise ValueError(f"{what} set has {len(f)} samples; precision/recall need more than pr_k={cfg.pr_k}")
    fid = fid_statistics_to_metric(fid_features_to_statistics(fr), fid_features_to_statistics(fg), verbose=False)
    kid = kid_features_to_metric(
        fg, fr, kid_subsets=KID_SUBSETS, kid_subset_size=min(cfg.kid_subset_size, len(fr), len(fg)),
        rng_seed=cfg.seed, verbose=False,
    )  # fmt: skip
    # torch-fidelity convention: input1 = generated, input2 = real.
    prc = prc_features_to_metric(
        fg, fr, prc_neighborhood=cfg.pr_k, prc_batch_size=1024, save_cpu_ram=True, verbose=False
    )
    dc = prdc(fr, fg, k=cfg.pr_k)
    out = {
        "fid": float(fid[KEY_METRIC_FID]),
        "kid_mean": kid[KEY_METRIC_KID_MEAN],
        "kid_std": kid[KEY_METRIC_KID_STD],
        "precision": prc[KEY_METRIC_PRECISION],
        "recall": prc[KEY_METRIC_RECALL],
        "density": dc["density"],
        "coverage": dc["coverage"],
        "n_samples": len(fg),
        "n_reference": len(fr),
    }
    if space.isc_layer is not None:
        isc = isc_features_to_metric(gen[space.isc_layer], splits=min(10, len(fg)), rng_seed=cfg.seed)
        out["is_mean"], out["is_std"] = isc[KEY_METRIC_ISC_MEAN], isc[KEY_METRIC_ISC_STD]
    return out


def evaluate_sets(
    real: torch.Tensor | RowSource,
    sets: dict[str, torch.Tensor | RowSource],
    cfg: EvalConfig,
    cache: Storage | None = None,
    real_hash: str | None = None,
    train: torch.Tensor | TrainingRows | None = None,
    train_labels: torch.Tensor | None = None,
    train_hash: str | None = None,
    progress: bool = True,
    client=None,
    space: FeatureSpace | None = None,
    resources: dict | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of each generated set against ``real``: ``{set: {fid, kid_mean, ..., coverage}}``.

    ``real`` and the sets are float images in [0, 1] (N, C, H, W) or, with the
    domain extractor only, vectors (N, D), as tensors or as row sources
    (:mod:`vegan.metrics.sources`: made chunk by chunk, on the workers of ``client``);
    at most ``cfg.n_samples`` of each (the first ones) are used, and of ``real`` too unless
    ``cfg.protocol`` is ``standard`` (then all of it: the whole test split). ``real_hash`` must be a
    content hash of a tensor ``real`` (computed when omitted; a source carries its ``key``).
    The trained extractors learn from ``train`` / ``train_labels`` (see :func:`feature_space`),
    which must not contain the reference images; pass a ready ``space`` to reuse one (and
    read its ``info``). The domain classifier adds an Inception-Score-style ``is_mean``/``is_std``.
    """
    if not sets:
        raise ValueError("evaluate_sets needs at least one generated set")
    if isinstance(real, torch.Tensor):
        real = TensorRows(real, key=real_hash or tensor_hash(real))
    if space is None:
        space = feature_space(cfg, train, train_labels, train_hash, cache, client=client)
    log.info("evaluating with %s", space.info)
    # protocol standard: the whole reference (the test split); split: its first n_samples
    ref_x = real if cfg.protocol == "standard" else head(real, cfg.n_samples, keep_key=True)
    ref, cached = reference_features(
        ref_x, space, f"{real.key}-n{len(ref_x)}", cache, cfg.batch_size, client, progress, resources
    )
    log.info("reference features %s", "loaded from cache" if cached else "computed")
    out = {}
    for name, x in sets.items():
        x = as_source(x[: cfg.n_samples] if isinstance(x, torch.Tensor) else x)
        if tuple(x.shape) != tuple(real.shape):
            raise ValueError(f"set {name!r} has examples of shape {tuple(x.shape)}, reference {tuple(real.shape)}")
        x = head(x, cfg.n_samples)
        if cache is None or space.fingerprint.startswith(TRAINED):  # cheap features: not worth the storage
            gen = extract_features(x, space, cfg.batch_size, client, progress, desc=name, resources=resources)
        else:  # TF-Inception: an interrupted 10k-image evaluation resumes without redoing finished sets
            gen, hit = cached_features(x, space, f"{x.key}-n{len(x)}", cache, cfg.batch_size, client,
                                       progress, name, folder="set-features", resources=resources)  # fmt: skip
            log.info("features of set %r %s", name, "loaded from cache" if hit else "computed")
        out[name] = compare_features(ref, gen, space, cfg)
    return out
