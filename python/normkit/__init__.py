"""normkit: fast, exact Batch and Layer Normalization for NumPy arrays.

The kernels are C++ (SIMD chosen at run time, OpenMP threads); this package is the thin,
checked NumPy API over them. ``normkit.reference`` holds plain-NumPy versions of the same math.
"""

from ._openmp import loading_extension as _loading_extension

with _loading_extension():
    from . import _core  # noqa: F401  (loads the OpenMP runtime, see _openmp.py)

from ._batch_norm import batch_norm, batch_norm_backward, batch_norm_forward, fold_batch_norm
from ._layer_norm import layer_norm, layer_norm_backward, layer_norm_forward
from ._runtime import get_num_threads, info, release_cached_memory, set_num_threads
from .layers import BatchNorm, LayerNorm, Module

__version__ = info()["version"]

__all__ = [
    "BatchNorm",
    "LayerNorm",
    "Module",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "fold_batch_norm",
    "get_num_threads",
    "info",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "release_cached_memory",
    "set_num_threads",
]
