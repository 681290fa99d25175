"""Semi-discrete optimal transport: uniform source -> latent codes (AE-OT).

``solve`` finds the Brenier potential ``u_h(x) = max_i <x, y_i> + h_i``;
``assign`` evaluates its cells. The pieces apart (OTT-JAX style): the problem
(:func:`make_problem`, :class:`Sampling`), the solver (:class:`NewtonSolver`,
maths only, ``step(state) -> state``), the execution (:class:`LocalEvaluator`,
``vegan.ot.distributed.DaskEvaluator``) and the output (:class:`OTResult`).
Codes may stay in a Zarr store (:class:`ZarrTargets`): with a Dask client the
workers read them and this process holds O(n) floats.
The generator (``vegan.ot.generate``) is not imported here.
"""

from vegan.ot.api import solve
from vegan.ot.assign import assign, assign_counts, topk_cells
from vegan.ot.counting import LocalEvaluator
from vegan.ot.problem import OTProblem, Sampling, make_problem
from vegan.ot.solver import NewtonSolver, OTResult, load_result, run, save_result
from vegan.ot.targets import ZarrTargets

__all__ = [
    "LocalEvaluator",
    "NewtonSolver",
    "OTProblem",
    "OTResult",
    "Sampling",
    "ZarrTargets",
    "assign",
    "assign_counts",
    "load_result",
    "make_problem",
    "run",
    "save_result",
    "solve",
    "topk_cells",
]
