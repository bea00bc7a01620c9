"""Post-training compression with second-order error compensation (Optimal Brain Surgeon, layer-wise)."""
from .grids import Codebook, UniformGrid
from .hessian import hessians
from .solver import Pruning, inverse_cholesky, obs_compress, output_error
from .stage import Method, SecondOrderConfig, second_order_

__all__ = ["Codebook", "Method", "Pruning", "SecondOrderConfig", "UniformGrid", "hessians", "inverse_cholesky",
           "obs_compress", "output_error", "second_order_"]
