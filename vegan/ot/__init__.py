"""Semi-discrete optimal transport: uniform source -> latent codes (AE-OT).

``solve`` finds the Brenier potential ``u_h(x) = max_i <x, y_i> + h_i``;
``assign`` evaluates its cells. The generator (``vegan.ot.generate``) is not
imported here, so this package never depends on it.
"""

from vegan.ot.assign import assign, assign_counts, topk_cells
from vegan.ot.problem import OTProblem, make_problem
from vegan.ot.solver import OTResult, load_result, save_result, solve

__all__ = [
    "OTProblem",
    "OTResult",
    "assign",
    "assign_counts",
    "load_result",
    "make_problem",
    "save_result",
    "solve",
    "topk_cells",
]
