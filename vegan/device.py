"""Where torch work runs: the one place that turns a config's ``device`` string into a device."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; anything else as torch reads it.

    An unusable name (``"gpu"``, ``"cuda:7"`` on a one-GPU machine) is a clear error here, not a
    failure deep inside the first kernel call.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev
