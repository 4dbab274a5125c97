"""The input contract: bad input gets a clear exception, never a crash or garbage."""

import normkit
import numpy as np
import pytest
from normkit._checks import AxisError

F32 = np.float32


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6)).astype(F32)
    g = np.ones(6, F32)
    y, mean, rstd = normkit.layer_norm_forward(x, g, g)
    return x, g, mean, rstd


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.bool_, np.complex64, np.float16, np.uint8, object]
)
def test_bad_dtype_is_type_error(dtype):
    x = np.ones((3, 4)).astype(dtype)
    with pytest.raises(TypeError, match="float32 or float64"):
        normkit.layer_norm(x)
    with pytest.raises(TypeError):
        normkit.layer_norm_backward(x, x, np.zeros(3), np.ones(3))


def test_mixed_dtypes_are_type_errors(data):
    x, g, mean, rstd = data
    with pytest.raises(TypeError, match="gamma: expected dtype float32"):
        normkit.layer_norm(x, g.astype(np.float64))
    with pytest.raises(TypeError, match="dy: expected dtype float32"):
        normkit.layer_norm_backward(x.astype(np.float64), x, mean, rstd)
    with pytest.raises(TypeError, match="out: expected dtype"):
        normkit.layer_norm(x, out=np.empty(x.shape))


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda x, g, m, r: normkit.layer_norm(x, np.ones(5, F32)),
            r"gamma: expected shape \(6,\), got \(5,\)",
        ),
        (
            lambda x, g, m, r: normkit.layer_norm(x, g, np.ones((1, 6), F32)),
            r"beta: expected shape \(6,\), got \(1, 6\)",
        ),
        (
            lambda x, g, m, r: normkit.layer_norm_backward(x[:3], x, m, r),
            r"dy: expected shape \(4, 6\), got \(3, 6\)",
        ),
        (
            lambda x, g, m, r: normkit.layer_norm_backward(x, x, m[:3], r),
            r"mean: expected shape \(4,\), got \(3,\)",
        ),
        (
            lambda x, g, m, r: normkit.layer_norm_backward(x, x, m, r[None]),
            r"rstd: expected shape \(4,\), got \(1, 4\)",
        ),
        (
            lambda x, g, m, r: normkit.layer_norm_backward(x, x, m, r, g[:2]),
            r"gamma: expected shape \(6,\), got \(2,\)",
        ),
        (
            lambda x, g, m, r: normkit.layer_norm(x, out=np.empty((4, 5), F32)),
            r"out: expected shape \(4, 6\), got \(4, 5\)",
        ),
    ],
)
def test_shape_mismatch_names_expected_and_received(data, call, message):
    with pytest.raises(ValueError, match=message):
        call(*data)


def test_out_must_be_c_contiguous_and_writeable(data):
    x = data[0]
    with pytest.raises(ValueError, match="C-contiguous"):
        normkit.layer_norm(x, out=np.empty((6, 4), F32).T)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        normkit.layer_norm(x, out=ro)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        normkit.layer_norm(x, out=[[0.0] * 6] * 4)


@pytest.mark.parametrize("axis", [2, -3, (0, 5)])
def test_axis_out_of_range(data, axis):
    with pytest.raises(AxisError):
        normkit.layer_norm(data[0], axis=axis)


@pytest.mark.parametrize("axis", [0, (0,), (), (-1, -1), (0, 2)])
def test_axis_not_trailing(axis):
    x = np.ones((2, 3, 4), F32)
    with pytest.raises(ValueError, match="axis"):
        normkit.layer_norm(x, axis=axis)


@pytest.mark.parametrize("axis", [1.0, "1", True, None])
def test_axis_wrong_type(data, axis):
    with pytest.raises(TypeError, match="axis"):
        normkit.layer_norm(data[0], axis=axis)


@pytest.mark.parametrize("eps", [np.nan, np.inf, -1e-5, -np.inf])
def test_bad_eps(data, eps):
    with pytest.raises(ValueError, match="eps"):
        normkit.layer_norm(data[0], eps=eps)


@pytest.mark.parametrize("eps", ["small", "1e-5", b"1e-5", None, [1e-5]], ids=repr)
def test_eps_wrong_type(data, eps):
    # float() would read "1e-5"; a string is still not a number
    with pytest.raises(TypeError, match=r"eps: expected a real number"):
        normkit.layer_norm(data[0], eps=eps)
    with pytest.raises(TypeError, match=r"eps: expected a real number"):
        normkit.batch_norm(data[0], training=True, eps=eps)


def test_empty_normalized_axis():
    with pytest.raises(ValueError, match="hold no values"):
        normkit.layer_norm(np.ones((3, 0), F32))


def test_scalar_input_has_no_axis():
    with pytest.raises(AxisError):
        normkit.layer_norm(np.float32(1.0))


@pytest.mark.parametrize("n", [0, -1])
def test_bad_thread_count(n):
    with pytest.raises(ValueError, match="threads"):
        normkit.set_num_threads(n)


@pytest.mark.parametrize("n", [1.5, True, "2", None], ids=repr)
def test_thread_count_wrong_type(n):
    with pytest.raises(TypeError, match="n: expected an int"):
        normkit.set_num_threads(n)


def test_core_rejects_mismatched_buffers():
    # The bindings check sizes themselves: a wrong call into _core is an error, not a crash.
    from normkit import _core

    x = np.ones((2, 3), F32)
    with pytest.raises(ValueError, match="elements"):
        _core.layer_norm_forward(x, None, None, 1e-5, np.empty(5, F32), (2,), 2, 3)
    with pytest.raises(ValueError, match="elements"):
        _core.layer_norm_forward(x, None, None, 1e-5, None, (3,), 2, 3)  # stats of 2 rows
    with pytest.raises(TypeError, match="dtype"):
        _core.layer_norm_forward(x, None, None, 1e-5, np.empty(6), (2,), 2, 3)
    with pytest.raises(ValueError, match="contiguous"):
        _core.layer_norm_forward(np.ones((3, 2), F32).T, None, None, 1e-5, None, (2,), 2, 3)
    with pytest.raises(ValueError, match="elements"):
        _core.batch_norm_backward(x, x, np.ones(3, F32), np.ones(3, F32), None, 2, 3, 2, True)
