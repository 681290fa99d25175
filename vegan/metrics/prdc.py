"""Precision, recall, density and coverage on feature vectors (Naeem et al. 2020).

Precision/recall (Kynkäänniemi et al. 2019) ask whether each sample falls in the
other set's k-NN balls, so a single outlier real image with a huge ball inflates
precision. Density counts *how many* real balls contain a generated sample
(divided by k: ~1 when the distributions match, >1 where samples crowd dense
regions); coverage is the share of real balls holding at least one generated
sample, which falls under mode collapse even when precision stays high.
Distances are computed in row chunks so memory stays at ``chunk x N``.
"""

from __future__ import annotations

import torch


def _chunks(x: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield x[start : start + size]


def knn_radii(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"need more than k={k} feature vectors, got {len(x)}")
    # kthvalue(k + 1): the nearest "neighbour" of a point is itself, at distance 0.
    return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in _chunks(x, chunk)])


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> dict[str, float]:
    """``{"precision", "recall", "density", "coverage"}`` of ``fake`` against ``real``."""
    real, fake = real.double(), fake.double()
    r_real = knn_radii(real, k, chunk)
    r_fake = knn_radii(fake, k, chunk)
    in_real_balls = torch.zeros(len(fake), dtype=torch.float64)  # per fake: how many real balls hold it
    recall_hits = torch.zeros(len(real), dtype=torch.bool)
    covered = torch.zeros(len(real), dtype=torch.bool)
    for start in range(0, len(real), chunk):
        d = torch.cdist(real[start : start + chunk], fake)  # (chunk, n_fake)
        radii = r_real[start : start + chunk, None]
        in_real_balls += (d < radii).sum(0)
        recall_hits[start : start + chunk] = (d < r_fake[None, :]).any(1)
        covered[start : start + chunk] = d.min(1).values < radii[:, 0]
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": float(recall_hits.double().mean()),
        "density": float(in_real_balls.mean() / k),
        "coverage": float(covered.double().mean()),
    }
