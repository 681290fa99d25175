"""The one device resolver: auto, explicit names, and clear errors for unusable ones."""

from __future__ import annotations

import pytest
import torch

from vegan.device import resolve_device


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_unusable_cuda_device_is_a_clear_error():
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")
