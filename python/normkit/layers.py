"""Layers with state: parameters, their gradients, and a forward/backward pair.

A training loop in NumPy looks like::

    y = layer(x)                    # forward, remembers what backward needs
    dx = layer.backward(dy)         # fills layer.grad_<name> for every parameter
    for name, param, grad in layer.params_and_grads():
        param -= lr * grad          # update in place
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np

from . import _checks
from ._batch_norm import batch_norm_backward, batch_norm_forward
from ._layer_norm import layer_norm_backward, layer_norm_forward


class Module:
    """Base class: parameters (updated in place by optimizers), gradients, state."""

    _param_names: tuple[str, ...] = ()
    _buffer_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.training = True

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def params_and_grads(self) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """``(name, parameter, gradient)`` for each parameter; gradients are ``None`` until the
        first ``backward``. Parameters are arrays an optimizer updates in place."""
        for name in self._param_names:
            param = getattr(self, name)
            if param is not None:
                yield name, param, getattr(self, "grad_" + name)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers, by name."""
        state = {}
        for name in self._param_names + self._buffer_names:
            value = getattr(self, name)
            if value is not None:
                state[name] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy values into the existing arrays (so optimizer references stay valid)."""
        own = Module.state_dict(self)  # the arrays; subclasses handle their other state
        if strict:
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing or unexpected:
                raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for name in own:
            if name not in state:
                continue
            target = getattr(self, name)
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"{name}: expected shape {target.shape}, got {value.shape}")
            target[...] = value


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` axes of its input.

    Mirrors ``torch.nn.LayerNorm``: ``gamma`` (ones) and ``beta`` (zeros) of shape
    ``normalized_shape`` when ``elementwise_affine``; ``bias=False`` drops ``beta``. Training
    and evaluation behave the same (no statistic crosses samples).
    """

    _param_names = ("gamma", "beta")
    # The functions doing the work (normkit.reference's layers swap in the NumPy versions).
    _forward = staticmethod(layer_norm_forward)
    _backward = staticmethod(layer_norm_backward)

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            shape = tuple(operator.index(n) for n in normalized_shape)
        else:
            shape = (operator.index(normalized_shape),)
        if not shape or any(n < 1 for n in shape):
            raise ValueError(f"normalized_shape: expected positive sizes, got {normalized_shape!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.normalized_shape = shape
        self.eps = _checks.eps_value(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.gamma = np.ones(shape, self.dtype) if elementwise_affine else None
        self.beta = np.zeros(shape, self.dtype) if elementwise_affine and bias else None
        self.grad_gamma = None
        self.grad_beta = None
        self._saved = None

    @property
    def _axis(self) -> tuple[int, ...]:
        return tuple(range(-len(self.normalized_shape), 0))

    def forward(self, x):
        x = _checks.float_array(x, "x")
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected dtype {self.dtype} (the layer's dtype), got {x.dtype}")
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k :] != self.normalized_shape or x.ndim < k:
            raise ValueError(
                f"x: expected trailing shape {self.normalized_shape}, got shape {x.shape}"
            )
        y, mean, rstd = self._forward(x, self.gamma, self.beta, eps=self.eps, axis=self._axis)
        self._saved = (x, mean, rstd)
        return y

    def backward(self, dy):
        """``dx`` for the last forward; stores ``grad_gamma``/``grad_beta`` (overwritten)."""
        if self._saved is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        x, mean, rstd = self._saved
        dx, dgamma, dbeta = self._backward(dy, x, mean, rstd, self.gamma, axis=self._axis)
        self.grad_gamma = dgamma
        self.grad_beta = dbeta if self.beta is not None else None
        return dx

    def __repr__(self) -> str:
        return (
            f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.beta is not None}, "
            f"dtype={self.dtype})"
        )


class BatchNorm(Module):
    """Batch normalization over the channel ``axis`` (PyTorch's BatchNorm1d/2d/3d in one).

    ``axis=1`` for (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W); ``axis=-1`` for
    channels-last data and (samples, features) tables. In training mode each channel is
    normalized by its batch statistics and ``running_mean``/``running_var`` are updated
    (``momentum`` weights the new batch; ``momentum=None`` keeps a cumulative average over
    ``num_batches_tracked`` batches). In eval mode the running statistics are used. With
    ``track_running_stats=False`` batch statistics are used in both modes.
    """

    _param_names = ("gamma", "beta")
    _buffer_names = ("running_mean", "running_var")
    _forward = staticmethod(batch_norm_forward)
    _backward = staticmethod(batch_norm_backward)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        axis: int = 1,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        c = operator.index(num_features)
        if c < 1:
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        if momentum is not None and not 0.0 <= _checks.real_value(momentum, "momentum") <= 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1] or None, got {momentum!r}")
        self.num_features = c
        self.eps = _checks.eps_value(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = operator.index(axis)
        self.gamma = np.ones(c, self.dtype) if affine else None
        self.beta = np.zeros(c, self.dtype) if affine else None
        self.grad_gamma = None
        self.grad_beta = None
        if track_running_stats:
            self.running_mean = np.zeros(c, self.dtype)
            self.running_var = np.ones(c, self.dtype)
        else:
            self.running_mean = self.running_var = None
        self.num_batches_tracked = 0
        self._saved = None

    def forward(self, x):
        x = _checks.float_array(x, "x")
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected dtype {self.dtype} (the layer's dtype), got {x.dtype}")
        if (
            x.ndim >= 2
            and -x.ndim <= self.axis < x.ndim
            and x.shape[self.axis] != self.num_features
        ):
            raise ValueError(
                f"x: expected {self.num_features} channels on axis {self.axis}, got shape {x.shape}"
            )
        update = self.training and self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if update and self.momentum is None:  # cumulative moving average
            momentum = 1.0 / (self.num_batches_tracked + 1)
        use_batch_stats = self.training or not self.track_running_stats
        y, mean, invstd = self._forward(
            x,
            self.running_mean,
            self.running_var,
            self.gamma,
            self.beta,
            training=use_batch_stats,
            momentum=momentum,
            eps=self.eps,
            axis=self.axis,
        )
        if update:
            self.num_batches_tracked += 1
        self._saved = (x, mean, invstd, use_batch_stats)
        return y

    def backward(self, dy):
        """``dx`` for the last forward (training or eval); stores ``grad_gamma``/``grad_beta``."""
        if self._saved is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        x, mean, invstd, batch_stats = self._saved
        dx, self.grad_gamma, self.grad_beta = self._backward(
            dy, x, mean, invstd, self.gamma, training=batch_stats, axis=self.axis
        )
        return dx

    def state_dict(self) -> dict[str, np.ndarray]:
        state = super().state_dict()
        if self.track_running_stats:
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, np.int64)
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        state = dict(state)
        count = state.pop("num_batches_tracked", None)
        if self.track_running_stats and count is None and strict:
            raise KeyError("state_dict mismatch: missing ['num_batches_tracked'], unexpected []")
        super().load_state_dict(state, strict=strict)
        if count is not None:
            self.num_batches_tracked = int(count)

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
            f"axis={self.axis}, dtype={self.dtype})"
        )
