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

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from vegan.ot.targets import (
    ScaledStats,
    TargetRows,
    TargetsError,
    ZarrTargets,
    load_rows,
    scale_rows,
    scaled_stats,
)
from vegan.ot.targets import fit_scaling as fit_targets_scaling

Source = Literal["cube", "ball"]
Sampler = Literal["sobol", "uniform"]
Precision = Literal["auto", "float32", "screened"]

# Samples per slice (the unit of determinism and of distribution). A power of two
# keeps Sobol blocks balanced; 4096 rows is also the CPU kernel's block.
MAX_SLICE = 4096
# Sobol indices are 30-bit in torch: at most 2^30 points per iteration.
_SOBOL_BITS = 30

TAG_TRAIN = 0
TAG_EVAL = 1
TAG_CENTROIDS = 2  # generation: Monte Carlo cell centroids
TAG_GENERATE = 3  # generation: the new samples
TAG_HIDDEN = 4  # the solver: samples that measure how far empty cells are from taking any mass


@dataclass(frozen=True)
class Sampling:
    """How source samples are drawn and scored: one frozen value, passed whole.

    The solver, the Dask workers and the generator all take this object, so a
    setting cannot be forwarded in one place and forgotten in another.
    ``precision`` picks the kernel's screening GEMM; it never changes a result
    (see :mod:`vegan.ot.assign`).
    """

    seed: int = 0
    source: Source = "cube"
    sampler: Sampler = "sobol"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        if self.source not in ("cube", "ball"):
            raise ValueError(f"source must be 'cube' or 'ball', got {self.source!r}")
        if self.sampler not in ("sobol", "uniform"):
            raise ValueError(f"sampler must be 'sobol' or 'uniform', got {self.sampler!r}")
        if self.precision not in ("auto", "float32", "screened"):
            raise ValueError(f"precision must be auto, float32 or screened, got {self.precision!r}")


def slice_size_for(n_samples: int) -> int:
    """Power-of-two slice size: ``MAX_SLICE``, or less for tiny sample counts."""
    return min(MAX_SLICE, 1 << max(0, math.ceil(math.log2(max(n_samples, 1)))))


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed, independent across all keys."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, *keys])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@functools.lru_cache(maxsize=16)
def _sobol_scramble(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    eng = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    return eng.sobolstate, eng.shift


def sobol_block(dim: int, start: int, size: int, seed: int) -> torch.Tensor:
    """Points ``start .. start+size-1`` of the Sobol sequence scrambled with ``seed`` (float32 in [0,1)).

    Bit for bit what one ``SobolEngine(dim, scramble=True, seed=seed)`` draws at
    those positions: the engine is positioned at ``start`` directly (gray-code
    XOR of the direction numbers), so any slice is O(size) to produce.
    """
    if start + size > 1 << _SOBOL_BITS:
        raise ValueError(f"at most 2^{_SOBOL_BITS} Sobol points per sequence")
    if start == 0:
        return torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed).draw(size, dtype=torch.float32)
    state, shift = _sobol_scramble(dim, seed)
    eng = torch.quasirandom.SobolEngine(dim, scramble=False)
    k = start - 1  # the engine continues from the point before `start`
    gray, q = k ^ (k >> 1), shift.clone()
    for j in range(_SOBOL_BITS):
        if (gray >> j) & 1:
            q ^= state[:, j]
    eng.sobolstate, eng.shift, eng.quasi, eng.num_generated = state, shift, q, start
    return eng.draw(size, dtype=torch.float32)


def sample_slice(
    d: int,
    size: int,
    sampling: Sampling,
    *,
    tag: int,
    iteration: int,
    index: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``size`` float32 source points: slice ``index`` of the sample set of ``(tag, iteration)``.

    With ``sobol`` the sample set of one iteration is ONE randomised QMC
    sequence (scrambled by ``(seed, tag, iteration)``) and slice ``index`` is
    its points ``index*size .. (index+1)*size - 1``: the union of an
    iteration's slices is a balanced Sobol set, which measured 0.68x (d = 16)
    and 0.87x (d = 32) the variance of i.i.d. points for cell counts. Every
    iteration gets an independent scramble. The ball uses one extra
    coordinate for the radius (``r = u^(1/d)``) and inverse-normal directions.
    """
    dim = d + 1 if sampling.source == "ball" else d
    if sampling.sampler == "sobol":
        u = sobol_block(dim, index * size, size, stream_seed(sampling.seed, tag, iteration))
    else:
        g = torch.Generator().manual_seed(stream_seed(sampling.seed, tag, iteration, index))
        u = torch.rand(size, dim, generator=g, dtype=torch.float32)
    if sampling.source == "cube":
        x = u * 2 - 1
    else:
        eps = 1e-7
        z = torch.special.ndtri(u[:, :d].clamp(eps, 1 - eps))
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        x = z * u[:, d:].pow(1.0 / d)
    return x.to(device)


def as_codes(y: Any, name: str = "targets y") -> np.ndarray:
    """Numpy / torch / zarr codes as a checked (n, d) array: 2-D, numeric, finite, non-empty.

    The one validation of codes, shared by the solver and the generator.
    """
    arr = _as_numpy_2d(y, name)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array (n_codes, dim) with rows and columns, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} contain NaN or inf in {bad} row(s)")
    return arr


def _as_numpy_2d(y: Any, name: str = "targets y") -> np.ndarray:
    """Materialise numpy / torch / zarr input as an (n, d) array, checked."""
    if isinstance(y, torch.Tensor):
        arr = y.detach().cpu().numpy()
    else:
        arr = np.asarray(y[...] if hasattr(y, "chunks") and not isinstance(y, np.ndarray) else y)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _check_nu(nu: Any, n: int) -> np.ndarray:
    """Weights: uniform by default; must have length n, be >= 0, > 0 per cell, sum to 1."""
    if nu is None:
        # One value broadcast to n (read-only, no memory): the driver holds O(n) floats at
        # millions of codes, and uniform weights need not be one of them.
        return np.broadcast_to(np.float64(1.0 / n), (n,))
    nu = np.asarray(nu.detach().cpu() if isinstance(nu, torch.Tensor) else nu, dtype=np.float64).ravel()
    if nu.shape[0] != n:
        raise ValueError(f"nu has length {nu.shape[0]} but there are n={n} targets")
    if not np.all(np.isfinite(nu)):
        raise ValueError("nu contains NaN or inf")
    if np.any(nu <= 0):
        raise ValueError("nu must be strictly positive (a zero-mass target has no cell; drop it from y instead)")
    total = float(nu.sum())
    # Explicit rather than silent: weights that do not sum to 1 are almost always a bug
    # upstream (wrong axis, counts instead of frequencies); small float drift is fine.
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"nu must sum to 1 (got {total:.8g}); pass nu / nu.sum() to normalise")
    return nu / total


@dataclass
class OTProblem:
    """Scaled targets, weights and source measure of one solve.

    ``y`` holds the scaled targets in this process, or is None when they stay in a Zarr
    store (``store``) that Dask workers read themselves: then this object holds O(n)
    floats only (weights, squared norms of the scaled codes) and never the codes.
    """

    y: np.ndarray | None  # (n, d) float32, scaled into the source domain; None: see `store`
    nu: np.ndarray  # (n,) float64, sums to 1 (uniform: one value broadcast, read-only)
    center: np.ndarray  # (d,) float64
    scale: float
    sampling: Sampling = Sampling()
    store: ZarrTargets | None = None  # where the unscaled codes live when `y` is None
    stats: ScaledStats | None = None  # computed from `y` when not given
    _torch_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.y is None and self.store is None:
            raise ValueError("an OTProblem needs its scaled targets y or the Zarr store they come from")
        if self.stats is None:
            if self.y is None:
                raise ValueError("an OTProblem on a Zarr store needs its ScaledStats (see make_problem)")
            self.stats = scaled_stats(self.y, np.zeros(self.d), 1.0)  # y is already scaled: scale_rows is exact

    @property
    def source(self) -> Source:
        return self.sampling.source

    def sample(
        self, size: int, *, tag: int, iteration: int, index: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """This problem's source samples (see :func:`sample_slice`)."""
        return sample_slice(self.d, size, self.sampling, tag=tag, iteration=iteration, index=index, device=device)

    def scale_codes(self, y: Any) -> np.ndarray:
        """Codes mapped into the source domain, exactly as the targets were."""
        return scale_targets(y, self.center, self.scale)

    def unscale_codes(self, z: np.ndarray) -> np.ndarray:
        """Scaled-space points back to the original latent space."""
        return np.asarray(z, dtype=np.float64) * self.scale + self.center

    @property
    def n(self) -> int:
        return self.y.shape[0] if self.y is not None else self.store.n

    @property
    def d(self) -> int:
        return self.y.shape[1] if self.y is not None else self.store.d

    @property
    def sq_norms(self) -> np.ndarray:
        """``|y_i|^2`` of the scaled targets (float64): the Voronoi start ``h_i = -|y_i|^2 / 2``."""
        if self.stats.sq_norms is None:  # handed over by take_sq_norms
            if self.y is None:
                raise ValueError(
                    "the squared norms of this problem's codes went to a solver's start (take_sq_norms); "
                    "build the problem again (make_problem) for another fresh start"
                )
            self.stats = scaled_stats(self.y, np.zeros(self.d), 1.0)
        return self.stats.sq_norms

    def take_sq_norms(self) -> np.ndarray:
        """:attr:`sq_norms`, handed over: this problem keeps no reference to the array.

        The solver needs them once, for its start (:meth:`vegan.ot.solver.NewtonSolver.init`);
        at millions of codes an n-vector kept through the whole solve is a tenth of the
        driver's peak. Asked for again, targets in memory recompute them, a problem on a
        Zarr store raises (its codes are not read in this process).
        """
        sq = self.sq_norms
        self.stats = dataclasses.replace(self.stats, sq_norms=None)
        return sq

    @property
    def max_abs_row_sum(self) -> float:
        """``max_i sum_j |y_ij|`` of the scaled targets: bounds the score range for the first margin."""
        return self.stats.max_abs_row_sum

    def rows(self, lo: int = 0, hi: int | None = None) -> TargetRows:
        """Rows of the scaled targets as workers load them from the store (see :mod:`vegan.ot.targets`)."""
        if self.store is None:
            raise ValueError("the targets of this problem are in memory, not in a Zarr store")
        return TargetRows(self.store, self.center, self.scale, self.fingerprint(), lo, hi)

    def targets(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Scaled targets as a float32 tensor on ``device`` (cached; read from the store when not in memory)."""
        key = str(device)
        if key not in self._torch_cache:
            if self.y is not None:
                self._torch_cache[key] = torch.from_numpy(self.y).to(device)
            else:
                self._torch_cache[key] = load_rows(self.rows(), device)
        return self._torch_cache[key]

    def fingerprint(self) -> str:
        """Identifies the problem, so a checkpoint of another problem is never resumed.

        Built from the block digests of the scaled codes, so codes in memory and the same
        codes in a Zarr store give the same fingerprint (a run may move onto a cluster).
        """
        if "fingerprint" not in self._torch_cache:
            hsh = hashlib.sha256()
            sm = self.sampling
            hsh.update(f"{self.n}x{self.d}:{sm.source}:{sm.sampler}:{sm.seed}:{self.scale!r}".encode())
            hsh.update(np.ascontiguousarray(self.center).tobytes())
            for lo in range(0, self.n, 1 << 16):  # by block: no n-sized copy of (broadcast) weights
                hsh.update(np.ascontiguousarray(self.nu[lo : lo + (1 << 16)]))
            hsh.update(self.stats.digest.encode())
            self._torch_cache["fingerprint"] = hsh.hexdigest()[:16]
        return self._torch_cache["fingerprint"]


def scale_targets(y: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """The one place targets are scaled (drivers and Dask workers must agree bit for bit)."""
    return scale_rows(y, center, scale)


def fit_scaling(y: np.ndarray, source: Source) -> tuple[np.ndarray, float]:
    """Center = mean; scale = largest sup-norm (cube) or 2-norm (ball) of centred targets.

    Block by block (:func:`vegan.ot.targets.fit_scaling`), as for codes in a Zarr store.
    """
    fit = fit_targets_scaling(np.asarray(y), source)
    return fit.center, fit.scale


def target_source(y: Any) -> np.ndarray | ZarrTargets:
    """``y`` as what the problem reads: a :class:`ZarrTargets` (a located ``zarr.Array`` too) or an array."""
    if isinstance(y, ZarrTargets):
        return y
    located = ZarrTargets.from_array(y) if hasattr(y, "chunks") and not isinstance(y, np.ndarray) else None
    return located if located is not None else _as_numpy_2d(y)


def make_problem(y: Any, nu: Any = None, sampling: Sampling | None = None, tasks=None) -> OTProblem:
    """Validate the inputs and build the scaled problem (errors say what is wrong).

    ``y`` is an array, or a Zarr array / :class:`ZarrTargets`: then the codes are only read
    block by block (on the workers of ``tasks``, a :class:`vegan.cluster.Tasks`, when it has
    a client) and the problem keeps O(n) floats and the store's location.
    """
    sampling = sampling or Sampling()
    src = target_source(y)
    n, d = (src.n, src.d) if isinstance(src, ZarrTargets) else src.shape
    if n < 2:
        raise ValueError(f"need at least 2 targets, got n={n}")
    if isinstance(src, np.ndarray):
        src = as_codes(src)
    weights = _check_nu(nu, n)
    try:
        fit = fit_targets_scaling(src, sampling.source, tasks)
    except TargetsError as exc:
        raise ValueError(f"targets y: {exc}") from exc
    stats = scaled_stats(src, fit.center, fit.scale, tasks)
    if isinstance(src, ZarrTargets):
        return OTProblem(None, weights, fit.center, fit.scale, sampling, store=src, stats=stats)
    return OTProblem(scale_targets(src, fit.center, fit.scale), weights, fit.center, fit.scale, sampling, stats=stats)
