"""Input checks shared by every normkit function: one place that says what is accepted."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

AxisError = getattr(np, "exceptions", np).AxisError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(a: Any, name: str) -> np.ndarray:
    """``a`` as an ndarray of float32/float64 (not copied); TypeError for any other dtype."""
    arr = a if type(a) is np.ndarray else np.asarray(a)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a float32 or float64 array, got dtype {arr.dtype} "
            f"(convert with {name}.astype(np.float32) or np.float64)"
        )
    return arr


def like(a: Any, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` checked to have ``dtype`` and ``shape``, C-contiguous (copied only if needed)."""
    if type(a) is np.ndarray and a.dtype is dtype and a.shape == shape and a.flags.c_contiguous:
        return a
    arr = a if type(a) is np.ndarray else np.asarray(a)
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of x), got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def optional_like(a: Any, name: str, dtype: np.dtype, shape: tuple[int, ...]):
    return None if a is None else like(a, name, dtype, shape)


def real_value(value: Any, name: str) -> float:
    """``value`` as a float: a real number (Python, NumPy scalar or 0-d array), not a string."""
    if not isinstance(value, (str, bytes, bytearray)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{name}: expected a real number, got {value!r}")


def eps_value(eps: Any) -> float:
    if type(eps) is float and 0.0 <= eps < math.inf:
        return eps
    value = real_value(eps, "eps")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {value}")
    return value


def _axis_index(axis: Any, ndim: int) -> int:
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis: expected an int or a tuple of ints, got {axis!r}")
    try:
        index = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis: expected an int or a tuple of ints, got {axis!r}") from None
    if not -ndim <= index < ndim:
        raise AxisError(f"axis {index} is out of bounds for array of dimension {ndim}")
    return index % ndim


def trailing_axes(axis: Any, ndim: int) -> int:
    """Number k of trailing axes named by ``axis`` (an int or a tuple: the last k axes)."""
    if type(axis) is int and (axis == -1 or axis == ndim - 1) and ndim > 0:
        return 1  # the common case, without the general checks below
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    if len(axes) == 0:
        raise ValueError("axis: expected at least one axis, got ()")
    indices = sorted(_axis_index(a, ndim) for a in axes)
    if len(set(indices)) != len(indices):
        raise ValueError(f"axis: repeated axis in {axis!r}")
    k = len(indices)
    if indices != list(range(ndim - k, ndim)):
        raise ValueError(
            f"axis: layer normalization runs over trailing axes (the last {k} of {ndim}), "
            f"got {axis!r}; move the axes to the end with np.moveaxis first"
        )
    return k


def out_array(out: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out: expected dtype {dtype}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out: expected a C-contiguous array")
    if not out.flags.writeable:
        raise ValueError("out: expected a writeable array")
    return out
