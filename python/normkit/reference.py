"""Plain-NumPy normalization, written to read like the math.

Computed in the dtype of the input: pass float64 arrays for a trustworthy reference (the tests
do); float32 input gives what a straightforward NumPy implementation gives. Also the "pure
NumPy" baseline of the benchmarks.
"""

from __future__ import annotations

import numpy as np

from . import _checks


def _trailing(x: np.ndarray, axis) -> tuple[int, ...]:
    k = _checks.trailing_axes(axis, x.ndim)
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm_forward(x, gamma=None, beta=None, eps=1e-5, axis=-1):
    """``(y, mean, rstd)`` of layer normalization over the trailing ``axis``."""
    x = np.asarray(x)
    axes = _trailing(x, axis)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)  # biased variance, two-pass
    rstd = 1.0 / np.sqrt(var + eps)
    y = xc * rstd
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y, mean.squeeze(axes), rstd.squeeze(axes)


def layer_norm_backward(dy, x, mean, rstd, gamma=None, axis=-1):
    """``(dx, dgamma, dbeta)``; with xhat = (x - mean) * rstd and g = dy * gamma over the n
    values of a sample, ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``."""
    x, dy = np.asarray(x), np.asarray(dy)
    axes = _trailing(x, axis)
    mean = np.expand_dims(mean, axes)
    rstd = np.expand_dims(rstd, axes)
    xhat = (x - mean) * rstd
    g = dy * gamma if gamma is not None else dy
    dx = rstd * (
        g
        - g.mean(axis=axes, keepdims=True)
        - xhat * (g * xhat).mean(axis=axes, keepdims=True)
    )
    if gamma is None:
        return dx, None, None
    batch_axes = tuple(range(x.ndim - len(axes)))
    return dx, (dy * xhat).sum(axis=batch_axes), dy.sum(axis=batch_axes)
