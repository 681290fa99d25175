"""TF-Inception on an inference runtime: backend choice, clear errors, exact float32, cached conversion."""

from __future__ import annotations

import pytest
import torch

from vegan.config import DataConfig, EvalConfig
from vegan.data import DatasetError, load_dataset
from vegan.metrics import InceptionWeightsError, feature_space, fidelity
from vegan.metrics import inception as inc
from vegan.metrics import runtimes as rt


@pytest.fixture(scope="module")
def images():
    try:
        inc.load_inception()
        return load_dataset(DataConfig(name="mnist", split="test", limit=4)).data
    except (InceptionWeightsError, DatasetError) as exc:
        pytest.skip(str(exc))


def test_backend_resolution_and_its_errors(monkeypatch):
    assert rt.resolve_backend("auto", "cpu")[0] == "openvino"  # a dependency of vegan: installed
    assert rt.resolve_backend("auto", "cuda")[0] == "torch"
    assert rt.resolve_backend("torch", "cpu") == ("torch", "eval.inception_backend = 'torch'")
    with pytest.raises(ValueError, match="unknown inception backend 'tensorrt'"):
        rt.resolve_backend("tensorrt")
    with pytest.raises(rt.BackendUnavailable, match="CPU only"):
        rt.resolve_backend("openvino", "cuda")
    with pytest.raises(ValueError, match="inception_backend"):
        EvalConfig(inception_backend="tensorrt")
    # A runtime whose package is missing (a real failed import lookup): named, with the way out.
    monkeypatch.setitem(rt.PACKAGES, "openvino", "vegan_no_such_runtime")
    with pytest.raises(rt.BackendUnavailable, match="vegan_no_such_runtime package is not installed"):
        rt.resolve_backend("openvino", "cpu")
    assert rt.resolve_backend("auto", "cpu")[0] == "torch"  # auto falls back to torch


def test_precision_follows_the_backend():
    assert inc.resolve_precision("auto", "cpu", "openvino")[0] == "float32"  # compiled float32: fast and exact
    assert inc.resolve_precision("bf16", "cpu", "openvino")[0] == "bf16"
    assert inc.resolve_precision("auto", "cpu", "onnxruntime")[0] == "float32"
    with pytest.raises(ValueError, match="onnxruntime' runs float32 only"):
        inc.resolve_precision("bf16", "cpu", "onnxruntime")


def test_openvino_float32_equals_the_exact_path_and_is_cached_apart(images, tmp_path, monkeypatch):
    """Tolerance: the same float32 network, other kernels: relative feature error < 1e-4 (measured ~3e-6);
    bf16 moves features by ~2 %."""
    from vegan.signals import signal_stack

    monkeypatch.setenv("VEGAN_CACHE", str(tmp_path))
    x = fidelity.to_extractor_input(images)
    stack = signal_stack()
    feats = {}
    for name, kwargs in {"exact": {}, "openvino": dict(backend="openvino"),
                         "openvino-bf16": dict(backend="openvino", precision="bf16")}.items():  # fmt: skip
        extractor = inc.InceptionTFOffline("inception-tf-offline", ["2048"], resize="matmul", **kwargs)
        with torch.no_grad():
            (feats[name],) = extractor(x)
    exact = feats["exact"]
    # OpenVINO left its own alternate signal stack on this thread, which segfaulted the next SIGTERM
    # (the GAN SIGTERM test, on AMD Zen 4): vegan puts the thread's own back (vegan.signals).
    assert signal_stack() == stack
    assert float((feats["openvino"] - exact).norm() / exact.norm()) < 1e-4
    assert 1e-4 < float((feats["openvino-bf16"] - exact).norm() / exact.norm()) < 0.05
    converted = list((tmp_path / "inception").iterdir())
    assert len(converted) == 1 and converted[0].name.startswith(f"{inc.load_inception()[1]}-openvino-")
    assert (converted[0] / "inception.xml").is_file() and (converted[0] / "inception.bin").is_file()

    spaces = {b: feature_space(EvalConfig(extractor="inception-tf", inception_backend=b, precision=p))
              for b, p in (("torch", "float32"), ("openvino", "float32"), ("auto", "bf16"))}  # fmt: skip
    digest = inc.load_inception()[1]
    assert spaces["torch"].fingerprint == f"inception-tf-offline-{digest}"  # the key it always had
    assert spaces["openvino"].fingerprint == f"inception-tf-offline-{digest}-openvino-float32"
    assert spaces["auto"].fingerprint.endswith("-openvino-bf16") and spaces["auto"].info["backend"] == "openvino"
