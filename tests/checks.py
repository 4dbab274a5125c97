"""Compact correctness checks, importable from tests and runnable in a subprocess
(``python -c "import checks; checks.run_all()"``) under a forced ISA or under qemu."""

from collections import OrderedDict
from functools import partial

import normkit
import numpy as np
from normkit import reference

# Tolerances relative to the scale of each output. float32 results are checked against a
# float64 reference; float64 results against an extended-precision (np.longdouble) one.
RTOL = {np.float32: 2e-6, np.float64: 1e-13}

# check_batch_norm's running-statistics momentum
MOMENTUM = 0.2


def streamed_rows(cols, dtype, extra=1, share=(1, 1)):
    """Rows of ``cols`` values of ``dtype`` that make an array ``extra`` rows past the size from
    which the kernels stream (``normkit.info()["stream_threshold_bytes"]``), or past
    ``share[0] / share[1]`` of it."""
    row_bytes = cols * np.dtype(dtype).itemsize
    return share[0] * normkit.info()["stream_threshold_bytes"] // (share[1] * row_bytes) + extra


def streamed_backward_rows(cols, dtype, extra=1):
    """Rows past the size from which the LayerNorm backward streams dx: its three arrays (x, dy,
    dx) past twice the threshold, two thirds of the forward's size."""
    return streamed_rows(cols, dtype, extra, share=(2, 3))


def _wide(a):
    """``a`` in the reference's precision: float64 for float32 data, np.longdouble for float64."""
    if a is None:
        return None
    a = np.asarray(a)
    return a.astype(np.float64 if a.dtype == np.float32 else np.longdouble)


def ref_forward(x, gamma, beta, eps=1e-5, axis=-1):
    return reference.layer_norm_forward(_wide(x), _wide(gamma), _wide(beta), eps=eps, axis=axis)


def ref_backward(dy, x, mean, rstd, gamma, axis=-1):
    return reference.layer_norm_backward(
        _wide(dy), _wide(x), _wide(mean), _wide(rstd), _wide(gamma), axis
    )


def y_scale(y_ref, mean_ref, rstd_ref, dtype):
    """Scale for comparing y: at least 1 (y is O(1)). A float64 mean can only be held to half an
    ulp, which moves y by up to ulp(mean) * rstd; this is the conditioning of float64 output
    on large-mean data, so the float64 scale grows by |mean| * rstd. float32 output keeps the
    mean as a float64 split into two floats and has no such term."""
    scale = max(1.0, float(np.abs(y_ref).max(initial=0.0)))
    if dtype == np.float64:
        scale *= 1.0 + float(np.max(np.abs(mean_ref) * rstd_ref, initial=0.0))
    return scale


def dx_scale(dx_ref, terms):
    """dx is a difference of terms of size |gamma * rstd * dy|; when few values share a
    statistic they nearly cancel, so the error is measured against the terms."""
    return max(terms, float(np.abs(dx_ref).max(initial=0.0)))


def sum_scale(abs_sums):
    """Parameter gradients are sums over many values: a sum's rounding error is bounded
    relative to the sum of the absolute values of its terms, not to the (possibly cancelled)
    result."""
    return float(np.max(abs_sums, initial=0.0))


def assert_close(actual, expected, dtype, what, scale=None):
    wide = np.float64 if dtype == np.float32 else np.longdouble
    actual = np.asarray(actual, wide)
    expected = np.asarray(expected, wide)
    scale = float(np.max(np.abs(expected), initial=0.0)) if scale is None else scale
    scale = max(scale, 1e-300)
    err = float(np.max(np.abs(actual - expected))) / scale if actual.size else 0.0
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3g} > {RTOL[dtype]:.1g}"


_MEMO: OrderedDict = OrderedDict()


def _memo(key, compute):
    """compute(), remembered under ``key`` for the next few calls. A case's inputs and reference
    results are the same under every ISA (conftest runs a case's ISAs one after
    another), so they are computed once; a backward reference, taken at the statistics normkit
    returned, is keyed by their bytes too. The results are read-only."""
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    value = compute()
    for a in value:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    _MEMO[key] = value
    while len(_MEMO) > 6:
        _MEMO.popitem(last=False)
    return value


def _inputs(shape, dtype, c, mean_offset, affine, seed, x_std=1.0):
    """x, dy, gamma, beta, running_mean, running_var of a case (c values per parameter)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * x_std + mean_offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(c).astype(dtype) if affine else None
    beta = rng.standard_normal(c).astype(dtype) if affine else None
    running_mean = rng.standard_normal(c).astype(dtype) + mean_offset
    running_var = rng.uniform(0.5, 2.0, c).astype(dtype)
    return x, dy, gamma, beta, running_mean, running_var


def _layer_norm_forward_reference(x, gamma, beta):
    """The float64 forward of check_layer_norm's case, with the scales its checks use."""
    y_ref, mean_ref, rstd_ref = ref_forward(x, gamma, beta)
    # A mean is a sum: its error is bounded relative to the mean of |x| (cancellation).
    mean_sc = sum_scale(np.abs(_wide(x)).mean(axis=-1, keepdims=True))
    return y_ref, mean_ref, rstd_ref, y_scale(y_ref, mean_ref, rstd_ref, x.dtype), mean_sc


def _layer_norm_backward_reference(dy, x, mean, rstd, gamma):
    """The float64 backward at normkit's statistics, with the scales check_layer_norm uses."""
    dx_ref, dgamma_ref, dbeta_ref = ref_backward(dy, x, mean, rstd, gamma)
    g = _wide(dy) * (1.0 if gamma is None else _wide(gamma))
    terms = float(np.max(np.abs(g) * _wide(rstd)[..., None], initial=0.0))
    scales = [dx_scale(dx_ref, terms), None, None]
    if gamma is not None:
        xhat = (_wide(x) - _wide(mean)[..., None]) * _wide(rstd)[..., None]
        batch_axes = tuple(range(x.ndim - 1))
        scales[1] = sum_scale(np.abs(_wide(dy) * xhat).sum(axis=batch_axes))
        scales[2] = sum_scale(np.abs(_wide(dy)).sum(axis=batch_axes))
    return dx_ref, dgamma_ref, dbeta_ref, *scales


def check_layer_norm(shape, dtype, mean_offset=0.0, affine=True, seed=0):
    case = ("layer_norm", shape, dtype, mean_offset, affine, seed)
    x, dy, gamma, beta, _, _ = _memo(
        case, partial(_inputs, shape, dtype, shape[-1], mean_offset, affine, seed)
    )
    y, mean, rstd = normkit.layer_norm_forward(x, gamma, beta)
    y_ref, mean_ref, rstd_ref, y_sc, mean_sc = _memo(
        (*case, "forward"), partial(_layer_norm_forward_reference, x, gamma, beta)
    )
    assert_close(y, y_ref, dtype, f"y {shape} {dtype.__name__}", scale=y_sc)
    assert_close(mean, mean_ref, dtype, "mean", scale=mean_sc)
    assert_close(rstd, rstd_ref, dtype, "rstd")
    # layer_norm returns y alone, its statistics written to scratch memory: the same bits.
    np.testing.assert_array_equal(normkit.layer_norm(x, gamma, beta), y)

    # The backward is checked at the statistics it was given (those of the forward).
    dx, dgamma, dbeta = normkit.layer_norm_backward(dy, x, mean, rstd, gamma)
    dx_ref, dgamma_ref, dbeta_ref, *scales = _memo(
        (*case, "backward", mean.tobytes(), rstd.tobytes()),
        partial(_layer_norm_backward_reference, dy, x, mean, rstd, gamma),
    )
    assert_close(dx, dx_ref, dtype, f"dx {shape} {dtype.__name__}", scale=scales[0])
    if affine:
        assert_close(dgamma, dgamma_ref, dtype, "dgamma", scale=scales[1])
        assert_close(dbeta, dbeta_ref, dtype, "dbeta", scale=scales[2])
    else:
        assert dgamma is None and dbeta is None


def _channel_axes(ndim, axis):
    """(other_axes, per_channel): the axes a channel's statistics run over, and the shape that
    broadcasts a per-channel array against x."""
    channel = axis % ndim
    other_axes = tuple(a for a in range(ndim) if a != channel)
    return other_axes, [-1 if a == channel else 1 for a in range(ndim)]


def _batch_norm_forward_reference(x, gamma, beta, running_mean, running_var, training, axis):
    """The float64 forward of check_batch_norm's case, with the scales its checks use."""
    rm_ref, rv_ref = _wide(running_mean), _wide(running_var)  # (updated in place)
    y_ref, mean_ref, invstd_ref = reference.batch_norm_forward(
        _wide(x),
        rm_ref,
        rv_ref,
        _wide(gamma),
        _wide(beta),
        training=training,
        momentum=MOMENTUM,
        axis=axis,
    )
    y_sc = y_scale(y_ref, mean_ref, invstd_ref, x.dtype)
    other_axes, _ = _channel_axes(x.ndim, axis)
    x_abs_mean = np.abs(_wide(x)).mean(axis=other_axes)
    mean_sc = sum_scale(x_abs_mean) if training else None
    # running_mean = (1 - momentum) * running_mean + momentum * mean: two terms that can cancel,
    # so its error is measured against their sizes (as sum_scale does), not against the result's
    rm_terms = (1 - MOMENTUM) * np.abs(_wide(running_mean)) + MOMENTUM * x_abs_mean
    rm_sc = sum_scale(rm_terms) if training else None
    return y_ref, mean_ref, invstd_ref, rm_ref, rv_ref, y_sc, mean_sc, rm_sc


def _batch_norm_backward_reference(dy, x, mean, invstd, gamma, training, axis):
    """The float64 backward at normkit's statistics, with the scales check_batch_norm uses."""
    dx_ref, dgamma_ref, dbeta_ref = reference.batch_norm_backward(
        _wide(dy),
        _wide(x),
        _wide(mean),
        _wide(invstd),
        _wide(gamma),
        training=training,
        axis=axis,
    )
    other_axes, per_channel = _channel_axes(x.ndim, axis)
    k = np.abs(_wide(invstd) * (1.0 if gamma is None else _wide(gamma))).reshape(per_channel)
    terms = float(np.max(k * np.abs(_wide(dy))))
    scales = [dx_scale(dx_ref, terms), None, None]
    if gamma is not None:
        xhat = (_wide(x) - _wide(mean).reshape(per_channel)) * _wide(invstd).reshape(per_channel)
        scales[1] = sum_scale(np.abs(_wide(dy) * xhat).sum(axis=other_axes))
        scales[2] = sum_scale(np.abs(_wide(dy)).sum(axis=other_axes))
    return dx_ref, dgamma_ref, dbeta_ref, *scales


def check_batch_norm(shape, axis, dtype, mean_offset=0.0, affine=True, seed=0):
    """Training forward + backward and eval forward + backward against the reference."""
    case = ("batch_norm", shape, axis, dtype, mean_offset, affine, seed)
    x, dy, gamma, beta, running_mean, running_var = _memo(
        case, partial(_inputs, shape, dtype, shape[axis], mean_offset, affine, seed, x_std=2.0)
    )
    what = f"{shape} axis={axis} {dtype.__name__}"
    for training in (True, False):
        rm, rv = running_mean.copy(), running_var.copy()
        y, mean, invstd = normkit.batch_norm_forward(
            x, rm, rv, gamma, beta, training=training, momentum=MOMENTUM, axis=axis
        )
        y_ref, mean_ref, invstd_ref, rm_ref, rv_ref, y_sc, mean_sc, rm_sc = _memo(
            (*case, training, "forward"),
            partial(
                _batch_norm_forward_reference,
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                training,
                axis,
            ),
        )
        assert_close(y, y_ref, dtype, f"y {what}", scale=y_sc)
        assert_close(mean, mean_ref, dtype, f"mean {what}", scale=mean_sc)
        assert_close(invstd, invstd_ref, dtype, f"invstd {what}")
        assert_close(rm, rm_ref, dtype, f"running_mean {what}", scale=rm_sc)
        assert_close(rv, rv_ref, dtype, f"running_var {what}")
        # batch_norm returns y alone, its statistics written to scratch memory: the same bits.
        rm_alone, rv_alone = running_mean.copy(), running_var.copy()
        y_alone = normkit.batch_norm(
            x, rm_alone, rv_alone, gamma, beta, training=training, momentum=MOMENTUM, axis=axis
        )
        for got, expected in ((y_alone, y), (rm_alone, rm), (rv_alone, rv)):
            np.testing.assert_array_equal(got, expected, err_msg=what)

        dx, dgamma, dbeta = normkit.batch_norm_backward(
            dy, x, mean, invstd, gamma, training=training, axis=axis
        )
        dx_ref, dgamma_ref, dbeta_ref, *scales = _memo(
            (*case, training, "backward", mean.tobytes(), invstd.tobytes()),
            partial(_batch_norm_backward_reference, dy, x, mean, invstd, gamma, training, axis),
        )
        assert_close(dx, dx_ref, dtype, f"dx {what} training={training}", scale=scales[0])
        if affine:
            assert_close(dgamma, dgamma_ref, dtype, f"dgamma {what}", scale=scales[1])
            assert_close(dbeta, dbeta_ref, dtype, f"dbeta {what}", scale=scales[2])
        else:
            assert dgamma is None and dbeta is None


BN_CASES = [
    ((4, 3), 1),
    ((6, 5, 17), 1),
    ((3, 7, 5, 5), 1),
    ((2, 3, 2, 4, 33), 1),
    ((9, 4, 4, 19), -1),
    ((50, 33), -1),
    ((2, 3, 4099), 1),
    ((3, 264), -1),  # few rows of many channels: by column group, 2 groups
]


def numeric_grad(f, a, h=1e-6, indices=None):
    """Central differences of the scalar f() with respect to the array a (changed in place and
    restored), at every element or at the flat `indices`."""
    flat = a.reshape(-1)
    grad = np.zeros(flat.size)
    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad.reshape(a.shape)


def assert_same_with_one_and_two_threads(compute):
    """compute() -> tuple of arrays (or None) gives the same bits on 1 and on 2 threads."""
    before = normkit.get_num_threads()
    try:
        normkit.set_num_threads(1)
        one = compute()
        normkit.set_num_threads(2)
        two = compute()
    finally:
        normkit.set_num_threads(before)
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert (a is None and b is None) or np.array_equal(a, b), "1 and 2 threads differ"


SMALL_CASES = [(4, 1), (3, 7), (5, 17), (2, 33), (3, 4099), (1, 65537), (300, 16)]


def run_all(expected_isa=None):
    if expected_isa is not None:
        active = normkit.info()["isa"]
        assert active == expected_isa, f"active ISA {active}, expected {expected_isa}"
    for shape in SMALL_CASES:
        for dtype in (np.float32, np.float64):
            for offset in (0.0, 1e4):
                check_layer_norm(shape, dtype, mean_offset=offset)
    for shape, axis in BN_CASES:
        for dtype in (np.float32, np.float64):
            for offset in (0.0, 1e4):
                check_batch_norm(shape, axis, dtype, mean_offset=offset)
    print("ok", normkit.info()["isa"])
