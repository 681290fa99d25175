"""pysdot's damped Newton on exact Laguerre cells, as a peer of ``benchmarks/ot_family.py`` (d = 2, 3).

    /path/to/peer-venv/bin/python benchmarks/peers/pysdot_solve.py CASE.npz OUT.npz

Runs in its own interpreter because pysdot cannot share vegan's: the newest release with a
binary wheel for CPython 3.11 is 0.2.16 (manylinux; 0.2.39 is an sdist without its C++ sources),
and it needs NumPy < 2 (under NumPy 2 ``add_box`` overflows and the 2-D cells come out wrong).
Set one up with::

    python3 -m venv /work/peers && /work/peers/bin/pip install pysdot==0.2.16 "numpy<2" scipy

``CASE.npz`` holds ``z`` (n x d, the codes in the source cube [-1, 1]^d, as vegan's kernel scores
them), ``nu`` (target masses, summing to 1) and ``tol`` (max relative cell error). The problem is
vegan's: uniform source on the cube, cell i = argmax <x, z_i> + h_i, which is pysdot's power cell
|x - z_i|^2 - w_i with w_i = |z_i|^2 + 2 h_i. pysdot starts from w = 0 (the Voronoi diagram, as
vegan's exact solver does) and stops when max |m_i - mass_i| < tol * min(mass): a conservative
reading of the relative tolerance, checked independently by the caller on the returned ``h``.
``OUT.npz`` gets ``h``, ``seconds`` (adjust_weights alone), ``iterations`` and ``failed``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from pysdot import OptimalTransport
from pysdot.domain_types import ConvexPolyhedraAssembly


def main(case_path: str, out_path: str) -> None:
    case = np.load(case_path)
    z, nu, tol = case["z"].astype(np.float64), case["nu"].astype(np.float64), float(case["tol"])
    n, d = z.shape
    domain = ConvexPolyhedraAssembly()
    domain.add_box([-1.0] * d, [1.0] * d)
    masses = nu * domain.measure()
    ot = OptimalTransport(positions=z, weights=np.zeros(n), domain=domain, masses=masses)
    ot.set_stopping_criterion(tol * masses.min(), "max delta masses")
    t0 = time.perf_counter()
    failed = bool(ot.adjust_weights())
    seconds = time.perf_counter() - t0
    h = (ot.get_weights() - (z * z).sum(1)) / 2
    np.savez(out_path, h=h, seconds=seconds, iterations=len(ot.delta_m), failed=failed)


if __name__ == "__main__":
    main(*sys.argv[1:3])
