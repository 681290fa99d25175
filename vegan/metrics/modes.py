"""Mode-collapse metrics on the 2-D grid of 25 Gaussians (VEEGAN / PacGAN protocol).

A generated point is *high quality* when it lies within ``n_std`` standard
deviations of some mode; a mode is *covered* when at least one high-quality
point belongs to it. One stray point is enough for that, so a stricter count
asks each mode for a share of the samples it would get under the uniform
mixture. The reverse KL ``KL(p_gen || uniform)`` over the nearest-mode
histogram of all points is 0 for a perfectly balanced generator and ``log 25``
when everything falls on one mode; quality is measured separately by
``high_quality``, so off-mode points still count towards their nearest mode.
"""

from __future__ import annotations

import math

import numpy as np

from vegan.data import GRID_MEANS, GRID_STD


def grid_metrics(
    samples: np.ndarray,
    means: np.ndarray = GRID_MEANS,
    std: float = GRID_STD,
    n_std: float = 3.0,
    strict_fraction: float = 0.1,
) -> dict:
    """Mode coverage, high-quality share and reverse KL of ``samples`` (N, 2).

    ``modes_covered_strict`` counts modes holding at least ``strict_min_count``
    high-quality points: ``strict_fraction`` of the ``N / n_modes`` points a mode
    gets under the true (uniform) mixture, and at least one.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != means.shape[1] or len(x) == 0:
        raise ValueError(f"grid metrics need samples of shape (N, {means.shape[1]}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("grid metrics: samples contain NaN or infinite values")
    n, n_modes = len(x), len(means)
    d2 = ((x[:, None, :] - means[None].astype(np.float64)) ** 2).sum(-1)  # (N, 25): small
    nearest = d2.argmin(1)
    hq = np.sqrt(d2[np.arange(n), nearest]) <= n_std * std
    hq_counts = np.bincount(nearest[hq], minlength=n_modes)
    strict_min = max(1, math.ceil(strict_fraction * n / n_modes))
    p = np.bincount(nearest, minlength=n_modes) / n
    nz = p > 0
    return {
        "modes_covered": int((hq_counts >= 1).sum()),
        "modes_covered_strict": int((hq_counts >= strict_min).sum()),
        "strict_min_count": strict_min,
        "n_modes": n_modes,
        "high_quality": float(hq.mean()),
        "reverse_kl": float((p[nz] * np.log(p[nz] * n_modes)).sum()),
        "n_samples": n,
        "mode_counts": hq_counts.tolist(),
    }
