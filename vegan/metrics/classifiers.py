"""The trained feature extractors: a small classifier of the dataset's training split.

``vegan-domain``
    A small classifier trained on the dataset's *training split* with its class
    labels (:func:`train_domain_classifier`). Inception features are meaningless
    for 8x8 digits or 2-D points and cost ~0.1 s per image on CPU; a domain
    classifier trains in seconds and its penultimate layer separates the
    dataset's classes, which is what FID needs. Because it also has class
    logits, it gives a "domain Inception Score". It must never see the
    reference images: a feature space fitted to the reference would make every
    set near the reference look better than it is.
``vegan-selfsup``
    The same network trained without labels, on a self-supervised pretext task:
    predict which rotation (0, 90, 180, 270 degrees; 0/180 for non-square images)
    was applied to a training image (Gidaris et al. 2018, "RotNet"). Predicting
    the rotation needs the shape and pose of the object, so the penultimate layer
    carries them; it trains as fast as the domain classifier. It is the label-free
    choice of ``extractor: auto``. Its logits say nothing about classes, so it gives
    no Inception Score.

Both are registered with torch-fidelity by :mod:`vegan.metrics.registry`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert

from vegan.config import config_hash
from vegan.data.base import ChunkedRows, Dataset, to_float
from vegan.storage import Storage

log = logging.getLogger(__name__)


class DomainClassifier(nn.Module):
    """A few-layer CNN (images) or MLP (vectors); ``features`` is the penultimate layer."""

    def __init__(self, shape: tuple[int, ...], n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.spec = {"shape": tuple(shape), "n_classes": n_classes, "width": width, "feature_dim": feature_dim}
        if len(shape) == 3:
            c = shape[0]
            # Strided from the first layer: a CPU trains this on MNIST in seconds.
            self.body = nn.Sequential(
                nn.Conv2d(c, width // 2, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                # Pooling to 4x4 makes one architecture fit 8x8 digits, 28x28 MNIST and 32x32 CIFAR.
                nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                nn.Linear(2 * width * 16, feature_dim), nn.ReLU(),
            )  # fmt: skip
        elif len(shape) == 1:
            self.body = nn.Sequential(
                nn.Linear(shape[0], feature_dim), nn.ReLU(), nn.Linear(feature_dim, feature_dim), nn.ReLU()
            )
        else:
            raise ValueError(f"domain classifier needs (C, H, W) images or (D,) vectors, got example shape {shape}")
        self.head = nn.Linear(feature_dim, n_classes)
        # Input standardisation, set from the training data (vectors such as the grid span [-4, 4]).
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        # RMS of the trained penultimate activations: dividing by it puts the features at unit
        # scale, so FID values are comparable across datasets and KID's polynomial kernel
        # (gamma = 1/d, coef0 = 1) sees the scale it was designed for.
        self.register_buffer("feature_scale", torch.ones(()))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Raw penultimate activations (what the head sees)."""
        return self.body((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@dataclass
class TrainedClassifier:
    model: DomainClassifier
    key: str  # cache key: identifies training data and settings
    accuracy: float  # on a held-out 10% of the training data
    seconds: float  # training time (0 when loaded from cache)
    cached: bool


@contextmanager
def _one_intra_op_thread():
    """Train the tiny classifier on one thread: its ops are too small to split, and on a
    busy 2-core machine two threads cost 6x more CPU per step (48 ms vs 7.7 ms measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rotations_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Quarter turns the rotation pretext task predicts: all four for square images, else 0 and 180."""
    return (0, 1, 2, 3) if shape[-1] == shape[-2] else (0, 2)


def _rotate(x: torch.Tensor, turns: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """Rotate each image ``x[i]`` by ``ks[turns[i]]`` quarter turns."""
    out = x.clone()
    for cls, k in enumerate(ks):
        sel = turns == cls
        if k and sel.any():
            out[sel] = torch.rot90(x[sel], k, dims=(2, 3))
    return out


@dataclass
class TrainingRows:
    """The trained extractors' data: rows of a dataset (in memory or a lazy Zarr one) less ``exclude``.

    ``exclude`` holds sorted dataset rows left out (training rows equal to a held-out row, for a
    dataset without a separate test split). Position ``p`` of the remaining rows is dataset row
    ``p + #{excluded rows <= that row}``, so nothing O(N) beyond the labels is built. Rows are
    read by :func:`~vegan.metrics.sources.gather_rows` (chunk by chunk, on Dask workers when a
    client is given): only the subsample a classifier trains on is ever in memory.
    """

    data: ChunkedRows
    labels: torch.Tensor | None = None
    exclude: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self):
        self.exclude = np.unique(np.asarray(self.exclude, dtype=np.int64))
        if self.labels is not None and len(self.labels) != len(self.data):
            raise ValueError(f"{len(self.data)} examples but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.data) - len(self.exclude)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def dataset_rows(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if not len(self.exclude):
            return positions
        shifted = self.exclude - np.arange(len(self.exclude))  # excluded row i has i excluded rows before it
        return positions + np.searchsorted(shifted, positions, side="right")

    def take(self, positions: np.ndarray, client=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw rows (``uint8`` images stay ``uint8``) and labels at ``positions`` (of the rows left after
        ``exclude``)."""
        from vegan.metrics.sources import gather_rows

        rows = self.dataset_rows(positions)
        x = torch.from_numpy(gather_rows(self.data, rows, client))
        return x, (None if self.labels is None else self.labels[torch.from_numpy(rows)])

    def content_key(self) -> str:
        """Cache identity: the dataset's content hash, its length and the excluded rows."""
        from vegan.metrics.sources import digest

        return digest("training-rows", self.data.content_hash(), len(self.data), self.exclude,
                      self.labels is not None)  # fmt: skip


def as_training_rows(x: torch.Tensor | TrainingRows, y: torch.Tensor | None = None) -> TrainingRows:
    if isinstance(x, TrainingRows):
        return x
    if y is not None and len(x) != len(y):
        raise ValueError(f"{len(x)} examples but {len(y)} labels")
    return TrainingRows(Dataset("train", x, y), y)


def train_domain_classifier(
    x: torch.Tensor | TrainingRows,
    y: torch.Tensor | None,
    steps: int = 300,
    max_examples: int = 10_000,
    batch_size: int = 64,
    seed: int = 0,
    task: str = "labels",
    client=None,
) -> tuple[DomainClassifier, float]:
    """Train on a subsample of ``x``; returns the model and its accuracy on a held-out 10% of it.

    ``x`` is a tensor (labels ``y``) or :class:`TrainingRows` (labels inside; ``y`` ignored):
    only ``max_examples`` uniformly drawn rows are read, by chunk (on Dask workers with a
    ``client``), so a dataset larger than memory works and the subsample is the same either way.
    ``task="labels"`` predicts the class labels; ``task="rotation"`` (images only, labels
    ignored) predicts the rotation applied to each image, which needs no labels.
    """
    data = as_training_rows(x, y)
    if task == "labels":
        if data.labels is None:
            raise ValueError("the domain classifier needs class labels for its training data")
    elif task == "rotation":
        if len(data.shape) != 3:
            raise ValueError(f"the rotation pretext task needs images (N, C, H, W), got examples of shape {data.shape}")
    else:
        raise ValueError(f"unknown classifier task {task!r}: labels or rotation")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:max_examples]
    x, y = data.take(idx.numpy(), client)  # images stay raw (uint8: a quarter of float32) until a batch
    if x.ndim == 2:
        x = to_float(x)
    ks = rotations_for(tuple(x.shape[1:])) if task == "rotation" else ()
    if task == "labels":
        y = y.long()
    else:  # a fixed rotation per validation example; training batches draw fresh ones
        y = torch.randint(0, len(ks), (len(x),), generator=g)
    n_val = max(1, len(x) // 10) if len(x) >= 20 else 0
    xv, yv, xt, yt = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    if task == "rotation":
        xv = _rotate(xv, yv, ks)
    torch.manual_seed(seed)
    model = DomainClassifier(tuple(x.shape[1:]), len(ks) if ks else int(y.max()) + 1)
    if x.ndim == 2:
        model.mean.copy_(xt.mean())
        model.std.copy_(xt.std().clamp_min(1e-6))
    else:  # images in [0, 1]
        model.mean.fill_(0.5)
        model.std.fill_(0.5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    with _one_intra_op_thread():
        for _ in range(steps):
            b = torch.randint(0, len(xt), (min(batch_size, len(xt)),), generator=g)
            if task == "rotation":
                target = torch.randint(0, len(ks), (len(b),), generator=g)
                inputs = to_float(_rotate(xt[b], target, ks))
            else:
                inputs, target = to_float(xt[b]), yt[b]
            loss = F.cross_entropy(model(inputs), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        model.feature_scale.copy_(model.embed(to_float(xt[:2048])).pow(2).mean().sqrt().clamp_min(1e-6))
        acc = float((model(to_float(xv)).argmax(1) == yv).float().mean()) if n_val else float("nan")
    return model, acc


def load_or_train_domain_classifier(
    x: torch.Tensor | TrainingRows,
    y: torch.Tensor | None,
    data_hash: str,
    cache: Storage | None = None,
    steps: int = 300,
    max_examples: int = 10_000,
    seed: int = 0,
    task: str = "labels",
    client=None,
) -> TrainedClassifier:
    """The classifier for a training set, cached by its content hash, task and training settings."""
    if task == "labels" and (x.labels if isinstance(x, TrainingRows) else y) is None:
        raise ValueError(
            "extractor 'domain' trains a classifier on the training split's labels, and this data has none: "
            "use extractor='auto' or 'selfsup' (label-free), or 'inception-tf'"
        )
    settings = {"steps": steps, "max_examples": max_examples, "seed": seed, "v": 3}
    if task != "labels":  # keys of label-trained classifiers stay what they were
        settings["task"] = task
    key = f"{data_hash}-{config_hash(settings)}"
    rel = f"domain-classifier/{key}.pt"
    if cache is not None and cache.exists(rel):
        blob = cache.load_torch(rel)
        model = DomainClassifier(**blob["spec"])
        model.load_state_dict(blob["state"])
        model.eval().requires_grad_(False)
        return TrainedClassifier(model, key, blob["accuracy"], 0.0, cached=True)
    t0 = time.perf_counter()
    model, acc = train_domain_classifier(
        x, y, steps=steps, max_examples=max_examples, seed=seed, task=task, client=client
    )
    seconds = time.perf_counter() - t0
    log.info("%s classifier trained in %.1f s, held-out accuracy %.3f", task, seconds, acc)
    if cache is not None:
        cache.save_torch(rel, {"spec": model.spec, "state": model.state_dict(), "accuracy": acc})
    return TrainedClassifier(model, key, acc, seconds, cached=False)


class DomainFeatureExtractor(FeatureExtractorBase):
    """Features ("features", penultimate) and "logits" of a :class:`DomainClassifier`.

    Takes torch-fidelity's uint8 Bx3xHxW images (grayscale repeated to three
    channels is averaged back to one) or float (N, D) vectors. The classifier
    comes as ``domain_classifier=`` (a keyword that ``calculate_metrics`` passes
    through) or as a file saved by :func:`load_or_train_domain_classifier`
    through ``feature_extractor_weights_path``.
    """

    def __init__(self, name, features_list, domain_classifier=None, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if domain_classifier is None:
            vassert(
                feature_extractor_weights_path is not None,
                f"{name} needs a trained classifier: pass domain_classifier= or feature_extractor_weights_path=",
            )
            blob = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=False)
            domain_classifier = DomainClassifier(**blob["spec"])
            domain_classifier.load_state_dict(blob["state"])
        self.classifier = domain_classifier

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand(1, 3, 28, 28) * 255).to(torch.uint8)

    def forward(self, x):
        shape = self.classifier.spec["shape"]
        if x.dtype == torch.uint8:
            x = x.float() / 255
            if len(shape) == 3 and shape[0] == 1 and x.shape[1] == 3:
                x = x.mean(1, keepdim=True)
        vassert(tuple(x.shape[1:]) == tuple(shape), f"{self.name}: input {tuple(x.shape[1:])}, trained on {shape}")
        raw = self.classifier.embed(x.float())
        out = {"features": raw / self.classifier.feature_scale, "logits": self.classifier.head(raw)}
        return tuple(out[name] for name in self.features_list)


class SelfSupFeatureExtractor(DomainFeatureExtractor):
    """Features of a rotation-pretext :class:`DomainClassifier`; its logits predict rotations, so
    the Inception Score is not offered (``isc`` maps to the features, which are not logits)."""

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"
