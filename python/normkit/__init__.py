"""normkit: fast, exact Batch and Layer Normalization for NumPy arrays.

The kernels are C++ (SIMD chosen at run time, OpenMP threads); this package is the thin,
checked NumPy API over them. ``normkit.reference`` holds plain-NumPy versions of the same math.
"""

from ._layer_norm import layer_norm, layer_norm_backward, layer_norm_forward
from ._runtime import get_num_threads, info, set_num_threads
from .layers import LayerNorm, Module

__version__ = info()["version"]

__all__ = [
    "LayerNorm",
    "Module",
    "get_num_threads",
    "info",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "set_num_threads",
]
