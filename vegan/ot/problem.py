"""The semi-discrete OT problem: targets, weights, source measure and its samples.

Targets are scaled into the source domain (``(y - center) / scale``) so the
learning rate and the sample counts mean the same thing for any autoencoder.

Samples are a pure function of ``(seed, tag, iteration, slice)``: iteration ``t``
uses slices ``0 .. k-1`` of ``slice_size`` points each. This is what makes a
resumed solve follow the uninterrupted trajectory, and a Dask solve with any
number of workers see exactly the single-process sample set: nothing depends on
a random stream that was consumed by earlier work.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

Source = Literal["cube", "ball"]
Sampler = Literal["sobol", "uniform"]

# Samples per slice (the unit of determinism and of distribution). A power of two
# keeps scrambled Sobol points balanced; 4096 rows is also the CPU kernel's block.
MAX_SLICE = 4096

TAG_TRAIN = 0
TAG_EVAL = 1
TAG_WARM = 2


def slice_size_for(n_samples: int) -> int:
    """Power-of-two slice size: ``MAX_SLICE``, or less for tiny sample counts."""
    return min(MAX_SLICE, 1 << max(0, math.ceil(math.log2(max(n_samples, 1)))))


def slice_seed(seed: int, tag: int, iteration: int, index: int) -> int:
    """A 63-bit seed for one slice, independent across all four coordinates."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, tag, iteration, index])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def sample_slice(
    d: int,
    size: int,
    *,
    seed: int,
    tag: int,
    iteration: int,
    index: int,
    source: Source = "cube",
    sampler: Sampler = "sobol",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``size`` float32 points of the source measure for slice ``index`` of ``iteration``.

    Sobol points are scrambled with a slice-specific seed, so each slice is a
    balanced randomised QMC set and slices are independent. The ball uses one
    extra coordinate for the radius (``r = u^(1/d)``) and inverse-normal
    directions.
    """
    s = slice_seed(seed, tag, iteration, index)
    dim = d + 1 if source == "ball" else d
    if sampler == "sobol":
        u = torch.quasirandom.SobolEngine(dim, scramble=True, seed=s).draw(size, dtype=torch.float32)
    elif sampler == "uniform":
        g = torch.Generator().manual_seed(s)
        u = torch.rand(size, dim, generator=g, dtype=torch.float32)
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    if source == "cube":
        x = u * 2 - 1
    elif source == "ball":
        eps = 1e-7
        z = torch.special.ndtri(u[:, :d].clamp(eps, 1 - eps))
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        x = z * u[:, d:].pow(1.0 / d)
    else:
        raise ValueError(f"unknown source {source!r}")
    return x.to(device)


def _as_numpy_2d(y: Any) -> np.ndarray:
    """Materialise numpy / torch / zarr input as a float64 (n, d) array, checked."""
    if isinstance(y, torch.Tensor):
        arr = y.detach().cpu().numpy()
    else:
        arr = np.asarray(y[...] if hasattr(y, "chunks") and not isinstance(y, np.ndarray) else y)
    if arr.ndim != 2:
        raise ValueError(f"targets y must be 2-D (n, d), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"targets y must be numeric, got dtype {arr.dtype}")
    return arr


def _check_nu(nu: Any, n: int) -> np.ndarray:
    """Weights: uniform by default; must have length n, be >= 0, > 0 per cell, sum to 1."""
    if nu is None:
        return np.full(n, 1.0 / n)
    nu = np.asarray(nu.detach().cpu() if isinstance(nu, torch.Tensor) else nu, dtype=np.float64).ravel()
    if nu.shape[0] != n:
        raise ValueError(f"nu has length {nu.shape[0]} but there are n={n} targets")
    if not np.all(np.isfinite(nu)):
        raise ValueError("nu contains NaN or inf")
    if np.any(nu <= 0):
        raise ValueError(
            "nu must be strictly positive (a zero-mass target has no cell; drop it from y instead)"
        )
    total = float(nu.sum())
    # Explicit rather than silent: weights that do not sum to 1 are almost always a bug
    # upstream (wrong axis, counts instead of frequencies); small float drift is fine.
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"nu must sum to 1 (got {total:.8g}); pass nu / nu.sum() to normalise")
    return nu / total


@dataclass
class OTProblem:
    """Scaled targets, weights and source measure of one solve."""

    y: np.ndarray  # (n, d) float32, scaled into the source domain
    nu: np.ndarray  # (n,) float64, sums to 1
    center: np.ndarray  # (d,) float64
    scale: float
    source: Source = "cube"
    _torch_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def d(self) -> int:
        return self.y.shape[1]

    def targets(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Scaled targets as a float32 tensor on ``device`` (cached)."""
        key = str(device)
        if key not in self._torch_cache:
            self._torch_cache[key] = torch.from_numpy(self.y).to(device)
        return self._torch_cache[key]

    def fingerprint(self) -> str:
        """Identifies the problem, so a checkpoint of another problem is never resumed."""
        hsh = hashlib.sha256()
        hsh.update(f"{self.n}x{self.d}:{self.source}:{self.scale!r}".encode())
        hsh.update(np.ascontiguousarray(self.center).tobytes())
        hsh.update(np.ascontiguousarray(self.nu).tobytes())
        hsh.update(np.ascontiguousarray(self.y).tobytes())
        return hsh.hexdigest()[:16]


def scale_targets(y: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """The one place targets are scaled (drivers and Dask workers must agree bit for bit)."""
    return ((np.asarray(y, dtype=np.float64) - center) / scale).astype(np.float32)


def fit_scaling(y: np.ndarray, source: Source) -> tuple[np.ndarray, float]:
    """Center = mean; scale = largest sup-norm (cube) or 2-norm (ball) of centred targets."""
    center = y.mean(axis=0, dtype=np.float64)
    diff = y.astype(np.float64) - center
    radius = np.abs(diff).max() if source == "cube" else np.sqrt((diff**2).sum(axis=1)).max()
    return center, float(radius) if radius > 0 else 1.0


def make_problem(y: Any, nu: Any = None, source: Source = "cube") -> OTProblem:
    """Validate the inputs and build the scaled problem (errors say what is wrong)."""
    if source not in ("cube", "ball"):
        raise ValueError(f"source must be 'cube' or 'ball', got {source!r}")
    arr = _as_numpy_2d(y)
    n, d = arr.shape
    if n < 2:
        raise ValueError(f"need at least 2 targets, got n={n}")
    if d < 1:
        raise ValueError("targets have zero dimensions")
    if not np.all(np.isfinite(arr)):
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"targets contain NaN or inf in {bad} row(s)")
    weights = _check_nu(nu, n)
    center, scale = fit_scaling(arr, source)
    return OTProblem(scale_targets(arr, center, scale), weights, center, scale, source)
