"""LayerNorm: each sample normalized over its trailing (feature) axes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _checks, _core


def _split(x: np.ndarray, axis: Any) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """(batch_shape, normalized_shape, rows, cols) of x for the trailing ``axis``."""
    k = _checks.trailing_axes(axis, x.ndim)
    batch_shape, norm_shape = x.shape[: x.ndim - k], x.shape[x.ndim - k :]
    cols = math.prod(norm_shape)
    if cols == 0:
        raise ValueError(f"x: the normalized axes {norm_shape} hold no values")
    return batch_shape, norm_shape, x.size // cols, cols


def _forward(x, gamma, beta, eps, axis, out, stats):
    x = _checks.float_array(x, "x")
    batch_shape, norm_shape, rows, cols = _split(x, axis)
    eps = _checks.eps_value(eps)
    gamma = _checks.optional_like(gamma, "gamma", x.dtype, norm_shape)
    beta = _checks.optional_like(beta, "beta", x.dtype, norm_shape)
    if out is not None:
        out = _checks.out_array(out, x.shape, x.dtype)  # (inputs overlapping it: see _core)
    x = np.ascontiguousarray(x)
    stats_shape = batch_shape if stats else None
    return _core.layer_norm_forward(x, gamma, beta, eps, out, stats_shape, rows, cols)


def layer_norm(x, gamma=None, beta=None, *, eps=1e-5, axis=-1, out=None) -> np.ndarray:
    """Layer normalization of ``x`` over its trailing ``axis`` (an int or tuple of axes).

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, with the mean and the biased variance
    of each sample over the normalized axes. ``gamma``/``beta`` have the shape of those axes.
    ``out`` (C-contiguous, shape and dtype of ``x``) receives the result and may be ``x``
    itself for an in-place normalization.
    """
    return _forward(x, gamma, beta, eps, axis, out, False)[0]


def layer_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, axis=-1):
    """``(y, mean, rstd)``: the output and the statistics the backward needs.

    ``mean`` and ``rstd = 1 / sqrt(var + eps)`` have shape ``x.shape[:-k]`` for k normalized
    axes and the dtype of ``x``.
    """
    return _forward(x, gamma, beta, eps, axis, None, True)


def layer_norm_backward(dy, x, mean, rstd, gamma=None, *, axis=-1):
    """``(dx, dgamma, dbeta)`` for ``y = layer_norm(x, gamma, beta)`` given ``dy = dL/dy``.

    ``mean`` and ``rstd`` are those returned by :func:`layer_norm_forward`. ``dgamma`` and
    ``dbeta`` are ``None`` when ``gamma`` is ``None``.
    """
    x = _checks.float_array(x, "x")
    batch_shape, norm_shape, rows, cols = _split(x, axis)
    dy = _checks.like(dy, "dy", x.dtype, x.shape)
    mean = _checks.like(mean, "mean", x.dtype, batch_shape)
    rstd = _checks.like(rstd, "rstd", x.dtype, batch_shape)
    gamma = _checks.optional_like(gamma, "gamma", x.dtype, norm_shape)
    x = np.ascontiguousarray(x)
    return _core.layer_norm_backward(dy, x, mean, rstd, gamma, norm_shape, rows, cols)
