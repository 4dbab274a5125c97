"""BatchNorm: each channel normalized over the batch and every other axis.

Semantics follow ``torch.nn.functional.batch_norm``. Keras/Flax users: their ``momentum`` is
the weight of the *old* running value, so ``momentum_keras = 1 - momentum_normkit`` (Keras's
0.99 is our 0.01), and they store the biased batch variance where we (like PyTorch) store the
unbiased one in ``running_var``; the normalization itself always uses the biased variance.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from . import _checks, _core


def _layout(x: np.ndarray, axis) -> tuple[int, int, int]:
    """(n, c, s): x viewed as n blocks of c channels of s contiguous values."""
    shape = x.shape
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"x: expected at least 2 dimensions (batch, channels, ...), got {shape}")
    if type(axis) is not int:  # (bool is not int: it fails in _channel_axis)
        axis = _channel_axis(axis)
    if not -ndim <= axis < ndim:
        raise _checks.AxisError(f"axis {axis} is out of bounds for array of dimension {ndim}")
    if axis < 0:
        axis += ndim
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def _channel_axis(axis) -> int:
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis: expected an int, got {axis!r}")
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"axis: expected an int (the channel axis), got {axis!r}") from None


def _running(a, name: str, dtype: np.dtype, c: int):
    if a is None:
        return None
    if type(a) is np.ndarray and a.dtype is dtype and a.shape == (c,):
        flags = a.flags
        if flags.c_contiguous and flags.writeable:
            return a  # the common case, without the messages below
    if not isinstance(a, np.ndarray):
        raise ValueError(
            f"{name}: expected a numpy.ndarray (it is updated in place), got {type(a).__name__}"
        )
    if a.dtype != dtype or a.shape != (c,) or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(
            f"{name}: expected a writeable C-contiguous {dtype} array of shape ({c},), got "
            f"{'a read-only ' if not a.flags.writeable else ''}{a.dtype} array of shape "
            f"{a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}"
        )
    return a


def _momentum(momentum) -> float:
    if type(momentum) is float and math.isfinite(momentum):
        return momentum
    if momentum is None:
        raise ValueError(
            "momentum=None (a cumulative average) needs a count of batches: use "
            "normkit.BatchNorm(momentum=None), or pass momentum=1/num_batches"
        )
    value = _checks.real_value(momentum, "momentum")
    if not math.isfinite(value):
        raise ValueError(f"momentum: expected a finite number, got {momentum!r}")
    return value


def _forward(x, running_mean, running_var, gamma, beta, training, momentum, eps, axis, out, stats):
    x = _checks.float_array(x, "x")
    n, c, s = _layout(x, axis)
    eps = _checks.eps_value(eps)
    momentum = _momentum(momentum)
    running_mean = _running(running_mean, "running_mean", x.dtype, c)
    running_var = _running(running_var, "running_var", x.dtype, c)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    gamma = _checks.optional_like(gamma, "gamma", x.dtype, (c,))
    beta = _checks.optional_like(beta, "beta", x.dtype, (c,))
    count = n * s
    if training and count < 2:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input of shape "
            f"{x.shape} ({count} value{'s' if count != 1 else ''} per channel)"
        )
    if running_mean is None and count < 1:
        raise ValueError(f"x: no values per channel to take statistics from (shape {x.shape})")
    if out is not None:
        out = _checks.out_array(out, x.shape, x.dtype)  # (inputs overlapping it: see _core)
    x = np.ascontiguousarray(x)
    return _core.batch_norm_forward(
        x,
        running_mean,
        running_var,
        gamma,
        beta,
        out,
        n,
        c,
        s,
        bool(training),
        momentum,
        eps,
        stats,
    )


def batch_norm(
    x,
    running_mean=None,
    running_var=None,
    gamma=None,
    beta=None,
    *,
    training=False,
    momentum=0.1,
    eps=1e-5,
    axis=1,
    out=None,
) -> np.ndarray:
    """Batch normalization of ``x`` per channel (``axis``: 1 for (N, C, ...), -1 for
    channels-last data and (samples, features) tables).

    In training (or without running statistics) each channel is normalized by its batch mean
    and biased variance over every other axis; in training ``running_mean``/``running_var``
    are updated in place: ``running = (1 - momentum) * running + momentum * batch`` (unbiased
    variance for ``running_var``). In inference the running statistics are used.
    ``out`` (C-contiguous, shape and dtype of ``x``) receives the result and may be ``x``.
    """
    y, _, _ = _forward(
        x, running_mean, running_var, gamma, beta, training, momentum, eps, axis, out, False
    )
    return y


def batch_norm_forward(
    x,
    running_mean=None,
    running_var=None,
    gamma=None,
    beta=None,
    *,
    training=False,
    momentum=0.1,
    eps=1e-5,
    axis=1,
):
    """``(y, mean, invstd)``: the output and the per-channel statistics it used (the batch's in
    training or without running statistics, the running ones in inference), with
    ``invstd = 1 / sqrt(var + eps)``."""
    return _forward(
        x, running_mean, running_var, gamma, beta, training, momentum, eps, axis, None, True
    )


def batch_norm_backward(dy, x, mean, invstd, gamma=None, *, training=True, axis=1):
    """``(dx, dgamma, dbeta)`` for ``y = batch_norm(x, ...)`` given ``dy = dL/dy``.

    ``mean``/``invstd`` are those returned by :func:`batch_norm_forward`. With
    ``training=True`` they are batch statistics and depend on x; with ``training=False`` they
    are constants and ``dx = dy * gamma * invstd``. ``dgamma`` and ``dbeta`` are ``None`` when
    ``gamma`` is ``None``.
    """
    x = _checks.float_array(x, "x")
    n, c, s = _layout(x, axis)
    dy = _checks.like(dy, "dy", x.dtype, x.shape)
    mean = _checks.like(mean, "mean", x.dtype, (c,))
    invstd = _checks.like(invstd, "invstd", x.dtype, (c,))
    gamma = _checks.optional_like(gamma, "gamma", x.dtype, (c,))
    x = np.ascontiguousarray(x)
    return _core.batch_norm_backward(dy, x, mean, invstd, gamma, n, c, s, bool(training))


def fold_batch_norm(weight, bias, bn):
    """Fold an inference-mode BatchNorm into the dense layer before it.

    For ``z = x @ weight.T + bias`` (``weight``: (out_features, in_features)) followed by
    ``bn`` (a :class:`normkit.BatchNorm` over the out_features, using its running
    statistics), returns ``(weight2, bias2)`` with ``x @ weight2.T + bias2`` equal to
    ``bn.eval()(z)``: ``scale = gamma / sqrt(running_var + eps)``, ``weight2 = weight *
    scale[:, None]``, ``bias2 = (bias - running_mean) * scale + beta``. ``bias`` may be None.
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight: expected shape (out_features, in_features), got {weight.shape}")
    c = weight.shape[0]
    if bn.num_features != c:
        raise ValueError(f"bn: expected {c} features (weight.shape[0]), got {bn.num_features}")
    if bn.running_mean is None:
        raise ValueError("bn: folding needs running statistics (track_running_stats=True)")
    bias = np.zeros(c, weight.dtype) if bias is None else np.asarray(bias)
    if bias.shape != (c,):
        raise ValueError(f"bias: expected shape ({c},), got {bias.shape}")
    f64 = np.float64
    scale = 1.0 / np.sqrt(bn.running_var.astype(f64) + bn.eps)
    if bn.gamma is not None:
        scale = scale * bn.gamma
    shift = bn.beta.astype(f64) if bn.beta is not None else 0.0
    dtype = np.result_type(weight.dtype, bn.dtype)
    weight2 = (weight * scale[:, None]).astype(dtype)
    bias2 = ((bias - bn.running_mean.astype(f64)) * scale + shift).astype(dtype)
    return weight2, bias2
