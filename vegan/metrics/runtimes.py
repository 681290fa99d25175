"""Run the TF-Inception graph on a CPU inference runtime (OpenVINO, ONNX Runtime) instead of TorchScript.

The TorchScript interpreter runs Inception-v3 op by op, far below the CPU's peak;
OpenVINO compiles the whole graph (fused convolutions, AMX/AVX-512 kernels) and on
the benchmark machine runs the *same float32 arithmetic* several times faster
(``benchmarks/fid_speed.py``, docs/BENCHMARKS.md). The graph is converted once from
the TorchScript weights and cached under the user cache directory
(``$VEGAN_CACHE``, default ``~/.cache/vegan``) in ``inception/``, keyed by the weights'
sha256 and the runtime's version, so a changed weights file or runtime never reuses
a stale conversion. A conversion is written to a temporary folder and renamed into
place, so concurrent processes (Dask workers) never read half a model.

Backends: ``torch`` (the TorchScript module itself, always available), ``openvino``
(float32 or bf16: OpenVINO's ``INFERENCE_PRECISION_HINT``, which defaults to bf16 on
AMX CPUs and is therefore always set) and ``onnxruntime`` (float32, CPU execution
provider). ``auto`` is OpenVINO where it is installed and the device is a CPU, else torch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vegan.signals import keep_signal_stack

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
INPUT_SHAPE = (3, 299, 299)

Runner = Callable[[torch.Tensor], torch.Tensor]
"""Normalised float32 images (N, 3, 299, 299) -> pool features (N, 2048)."""


class BackendUnavailable(RuntimeError):
    """The inference runtime a config names is not installed or cannot run the network."""


def user_cache_dir() -> Path:
    return Path(os.environ.get("VEGAN_CACHE", "~/.cache/vegan")).expanduser()


def available(backend: str) -> bool:
    return backend == "torch" or importlib.util.find_spec(PACKAGES[backend]) is not None


def resolve_backend(backend: str, device: str | torch.device = "cpu") -> tuple[str, str]:
    """``auto`` -> ``openvino`` on a CPU where it is installed, else ``torch``; returns ``(backend, why)``.

    An explicit runtime that is not installed is a :class:`BackendUnavailable` naming the package;
    the runtimes run on CPU only, so naming one with a GPU device is an error too.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown inception backend {backend!r}: one of {', '.join(BACKENDS)}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto":
        if not on_cpu:
            return "torch", "auto: torch on a GPU"
        if available("openvino"):
            return "openvino", "auto: OpenVINO is installed (compiled graph, several times faster on CPU)"
        log.warning("OpenVINO is not installed (pip install openvino): TF-Inception runs on TorchScript, slower")
        return "torch", "auto: torch because OpenVINO is not installed"
    if backend != "torch":
        if not on_cpu:
            raise BackendUnavailable(f"eval.inception_backend = {backend!r} runs on CPU only, not on {device}")
        if not available(backend):
            raise BackendUnavailable(
                f"eval.inception_backend = {backend!r} but the {PACKAGES[backend]} package is not installed: "
                f"`pip install {PACKAGES[backend]}` or use inception_backend 'torch' or 'auto'"
            )
    return backend, f"eval.inception_backend = {backend!r}"


def _cached(path: Path, write: Callable[[Path], None]) -> Path:
    """``path`` (a folder), made by ``write(tmp_folder)`` and renamed into place when missing."""
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: its copy is as good as ours
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _example() -> torch.Tensor:
    return torch.zeros(2, *INPUT_SHAPE)


def openvino_model(net: torch.jit.ScriptModule, digest: str) -> Path:
    """The OpenVINO IR of ``net`` (float32 weights), converted once per weights digest and OpenVINO version."""
    import openvino as ov

    def write(folder: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ov.convert_model(net, example_input=_example())
        model.reshape([-1, *INPUT_SHAPE])  # any batch size
        ov.save_model(model, str(folder / "inception.xml"), compress_to_fp16=False)

    folder = user_cache_dir() / "inception" / f"{digest}-openvino-{ov.get_version().split('-')[0]}"
    return _cached(folder, write) / "inception.xml"


def onnx_model(net: torch.jit.ScriptModule, digest: str) -> Path:
    """The ONNX export of ``net``, once per weights digest and torch version (the exporter's)."""

    def write(folder: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (_example(),), str(folder / "inception.onnx"), dynamo=False,
                              input_names=["x"], output_names=["features"], dynamic_axes={"x": {0: "n"}})  # fmt: skip

    folder = user_cache_dir() / "inception" / f"{digest}-onnx-torch{torch.__version__.split('+')[0]}"
    return _cached(folder, write) / "inception.onnx"


def make_runner(
    backend: str, precision: str, net: torch.jit.ScriptModule, digest: str, streams: int | None = None
) -> Runner:
    """A callable running ``net``'s computation on ``backend`` (resolved: not ``auto``) in ``precision``.

    The runtimes use ``torch.get_num_threads()`` threads, the process's one thread setting;
    OpenVINO runs them as ``streams`` parallel streams (default: one per thread).
    """
    threads = torch.get_num_threads()
    streams = streams or threads
    if backend == "openvino":
        import openvino as ov

        xml = openvino_model(net, digest)
        hint = {"float32": "f32", "bf16": "bf16"}[precision]
        # One stream per thread, each running its share of a batch: on a busy CPU the streams never
        # wait for each other's descheduled threads (a one-stream, two-thread run does, per layer).
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams,
                  "PERFORMANCE_HINT": "THROUGHPUT"}  # fmt: skip
        # keep_signal_stack: OpenVINO leaves a dangling alternate signal stack behind (vegan.signals).
        with keep_signal_stack():
            compiled = ov.Core().compile_model(str(xml), "CPU", config)
            requests = [compiled.create_infer_request() for _ in range(streams)]

        def run(x: torch.Tensor) -> torch.Tensor:
            x = np.ascontiguousarray(x.numpy(), dtype=np.float32)
            parts = np.array_split(x, min(len(requests), len(x)))
            outs = []
            with keep_signal_stack():
                for request, part in zip(requests, parts, strict=False):
                    request.start_async([part])
                for request, _ in zip(requests, parts, strict=False):
                    request.wait()
                    outs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
            return torch.from_numpy(np.concatenate(outs))

        return run
    if backend == "onnxruntime":
        if precision != "float32":
            raise BackendUnavailable("inception_backend 'onnxruntime' runs float32 only: set eval.precision: float32")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(onnx_model(net, digest)), options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"x": np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0])

        return run
    raise ValueError(f"make_runner: backend {backend!r} is not a runtime (torch runs the module itself)")
