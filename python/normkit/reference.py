"""Plain-NumPy normalization, written to read like the math.

Computed in the dtype of the input: pass float64 arrays for a trustworthy reference (the tests
do); float32 input gives what a straightforward NumPy implementation gives. Also the "pure
NumPy" baseline of the benchmarks.
"""

from __future__ import annotations

import numpy as np

from . import _checks, layers


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
        g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)
    )
    if gamma is None:
        return dx, None, None
    batch_axes = tuple(range(x.ndim - len(axes)))
    return dx, (dy * xhat).sum(axis=batch_axes), dy.sum(axis=batch_axes)


def _channel_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    axis %= x.ndim
    return tuple(a for a in range(x.ndim) if a != axis)


def _per_channel(v: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return np.reshape(v, shape)


def batch_norm_forward(
    x,
    running_mean=None,
    running_var=None,
    gamma=None,
    beta=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    axis=1,
):
    """``(y, mean, invstd)`` of batch normalization over every axis but ``axis``; updates the
    running statistics in place in training (PyTorch convention: unbiased running_var)."""
    x = np.asarray(x)
    axes = _channel_axes(x, axis)
    if training or running_mean is None:
        mean = x.mean(axis=axes)
        xc = x - _per_channel(mean, x, axis)
        var = (xc * xc).mean(axis=axes)
        if training and running_mean is not None:
            n = x.size // x.shape[axis]
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * var * n / (n - 1)
    else:
        mean, var = running_mean.copy(), running_var.copy()
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - _per_channel(mean, x, axis)) * _per_channel(invstd, x, axis)
    if gamma is not None:
        y = y * _per_channel(gamma, x, axis)
    if beta is not None:
        y = y + _per_channel(beta, x, axis)
    return y, mean, invstd


def batch_norm_backward(dy, x, mean, invstd, gamma=None, training=True, axis=1):
    """``(dx, dgamma, dbeta)``. Training: with xhat = (x - mean) * invstd over the N values of
    a channel, ``dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``; eval:
    ``dx = gamma * invstd * dy``."""
    x, dy = np.asarray(x), np.asarray(dy)
    axes = _channel_axes(x, axis)
    xhat = (x - _per_channel(mean, x, axis)) * _per_channel(invstd, x, axis)
    k = invstd if gamma is None else gamma * invstd
    if training:
        dx = _per_channel(k, x, axis) * (
            dy
            - dy.mean(axis=axes, keepdims=True)
            - xhat * (dy * xhat).mean(axis=axes, keepdims=True)
        )
    else:
        dx = _per_channel(k, x, axis) * dy
    if gamma is None:
        return dx, None, None
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


class LayerNorm(layers.LayerNorm):
    """:class:`normkit.LayerNorm` computed by the NumPy functions above (same API and state)."""

    _forward = staticmethod(layer_norm_forward)
    _backward = staticmethod(layer_norm_backward)


class BatchNorm(layers.BatchNorm):
    """:class:`normkit.BatchNorm` computed by the NumPy functions above (same API and state)."""

    _forward = staticmethod(batch_norm_forward)
    _backward = staticmethod(batch_norm_backward)
