"""LayerNorm against the reference, finite differences, layouts, threads and ISAs."""

import math
import threading

import normkit
import numpy as np
import pytest
from checks import (
    assert_close,
    assert_same_with_one_and_two_threads,
    check_layer_norm,
    numeric_grad,
    ref_backward,
    ref_forward,
    streamed_backward_rows,
    streamed_rows,
    sum_scale,
    y_scale,
)

# 768, 1000, 4096: rows of one chunk taken in pairs (forward_row_pairs) where they are whole vectors
WIDTHS = [
    1,
    3,
    7,
    15,
    16,
    17,
    31,
    32,
    33,
    64,
    100,
    128,
    255,
    256,
    257,
    768,
    1000,
    4096,
    4099,
    65537,
]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("offset", [0.0, 1e4], ids=["mean0", "mean1e4"])
def test_matches_reference(isa, width, dtype, offset):
    rows = 13 if width <= 4099 else 2  # 13: a full group of rows and a partial one
    check_layer_norm((rows, width), dtype, mean_offset=offset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(65536, 128), (1, 262144), (3, 70001)], ids=str)
def test_tall_and_wide_shapes(isa, shape, dtype):
    check_layer_norm(shape, dtype, mean_offset=3.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 45), (19, 128), (5, 3000), (19, 768)], ids=str)
def test_without_affine(isa, shape, dtype):
    check_layer_norm(shape, dtype, affine=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [16, 33, 64, 100, 128, 256, 1000])
@pytest.mark.parametrize("pattern", ["sorted", "outliers_first", "spike_first"])
def test_rows_starting_far_from_their_mean(isa, width, dtype, pattern):
    # Each row's statistics are taken around a shift from its first values; rows whose first
    # values are far from the mean (sorted data, an outlying first block, one huge first
    # value) must come out as exact as any other, also at mean 1e4 x std.
    rng = np.random.default_rng(width)
    x = 1e4 + rng.standard_normal((13, width))
    if pattern == "sorted":
        x = np.sort(x, axis=1)
    elif pattern == "outliers_first":
        x[:, :16] += 1e3
    else:
        x[:, 0] = 1e6
    x = x.astype(dtype)
    y, mean, rstd = normkit.layer_norm_forward(x)
    y_ref, mean_ref, rstd_ref = ref_forward(x, None, None)
    assert_close(y, y_ref, dtype, "y", scale=y_scale(y_ref, mean_ref, rstd_ref, dtype))
    assert_close(rstd, rstd_ref, dtype, "rstd")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 100003), (13, 8195)], ids=str)
def test_long_sorted_rows_stay_exact(isa, shape, dtype):
    # Long rows are summed chunk by chunk and the chunks merged (one row: chunks in parallel;
    # many rows: row by row). Sorted rows at mean 1e4 x std make the chunk means differ by
    # O(std) while |mean| is 1e4 std: merging absolute means would lose ~4 digits of rstd.
    rng = np.random.default_rng(7)
    x = np.sort(1e4 + rng.standard_normal(shape), axis=1).astype(dtype)
    _, mean, rstd = normkit.layer_norm_forward(x)
    for i, row in enumerate(x.astype(np.float64)):
        true_mean = math.fsum(row) / row.size
        true_var = math.fsum((row - true_mean) ** 2) / row.size
        assert abs(float(mean[i]) - true_mean) <= np.spacing(dtype(true_mean)) + 4 * np.spacing(
            true_mean
        )
        # rounding to dtype plus a few float64 roundings
        rtol = 2 * np.finfo(dtype).eps + 8 * np.finfo(np.float64).eps
        np.testing.assert_allclose(float(rstd[i]), 1 / math.sqrt(true_var + 1e-5), rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [64, 100, 128, 256])
@pytest.mark.parametrize("offset", [10.0, 1e3])
def test_rows_whose_first_vector_lies_far_off_are_summed_again(isa, width, dtype, offset):
    # Short rows go four or eight at a time, their shifts the means of their first vectors. Here
    # the first 8 values lie `offset` std above the rest: the shift is more than 2 std from the
    # mean, and the row is summed again around its mean. Left summed around the far shift, rstd
    # came out up to 6 eps off in float32 and 11 in float64 (AVX2); summed again, within 1.
    rng = np.random.default_rng(width)
    x = 1e4 + rng.standard_normal((64, width))
    x[:, :8] += offset
    x = x.astype(dtype)
    _, _, rstd = normkit.layer_norm_forward(x)
    rtol = 2 * np.finfo(dtype).eps + 8 * np.finfo(np.float64).eps
    for i, row in enumerate(x.astype(np.float64)):
        true_mean = math.fsum(row) / row.size
        true_var = math.fsum((row - true_mean) ** 2) / row.size
        np.testing.assert_allclose(float(rstd[i]), 1 / math.sqrt(true_var + 1e-5), rtol=rtol)


@pytest.mark.parametrize("shape", [(3, 64), (3, 100), (3, 128), (2, 8195), (1, 100003)], ids=str)
def test_float32_values_whose_squares_overflow(isa, shape):
    # float32 sums of squared deviations overflow past 1.8e19 from the shift; those rows are
    # summed again in float64 instead of coming out with rstd = 0.
    rng = np.random.default_rng(11)
    x = (1 + rng.standard_normal(shape)).astype(np.float32)
    x[:, 0] = -1e20
    x[-1, shape[1] // 2] = 3e25
    y, mean, rstd = normkit.layer_norm_forward(x)
    y_ref, mean_ref, rstd_ref = ref_forward(x, None, None)
    assert_close(y, y_ref, np.float32, "y", scale=y_scale(y_ref, mean_ref, rstd_ref, np.float32))
    assert_close(rstd, rstd_ref, np.float32, "rstd")
    assert_close(mean, mean_ref, np.float32, "mean")


@pytest.mark.parametrize(
    "shape",
    [(3, 7), (3, 64), (5, 100), (20, 128), (2, 8195), (1, 100003), "streamed 128", "streamed 768"],
    ids=str,
)
def test_constant_rows_near_the_float64_maximum(isa, shape):
    # Each row's shift is the mean of its first vector, summed as values / width: their plain
    # sum would overflow here. Every path stays exact: grouped rows, chunked rows, and arrays
    # past the streaming threshold, whose shifts come one row at a time (128 columns) or with
    # the rows in pairs (768).
    if isinstance(shape, str):
        cols = int(shape.split()[1])
        shape = (streamed_rows(cols, np.float64), cols)
    levels = np.resize([1.5e308, -1.7e308, 1e308, -1e308, 0.5], shape[0])
    x = np.broadcast_to(levels[:, None], shape).copy()
    y, mean, rstd = normkit.layer_norm_forward(x)
    np.testing.assert_array_equal(mean, levels)
    np.testing.assert_array_equal(rstd, np.full(shape[0], 1 / np.sqrt(1e-5)))
    np.testing.assert_array_equal(y, np.zeros(shape))


@pytest.mark.parametrize("which", ["gamma", "beta"])
@pytest.mark.parametrize("shape", [(6, 19), (11, 768)], ids=str)
def test_gamma_only_or_beta_only(rng, which, shape):
    x = rng.standard_normal(shape)
    p = rng.standard_normal(shape[1])
    gamma, beta = (p, None) if which == "gamma" else (None, p)
    y = normkit.layer_norm(x, gamma, beta)
    y_ref = ref_forward(x, gamma, beta)[0]
    assert_close(y, y_ref, np.float64, "y")


def test_large_mean_float32_beats_naive_numpy(rng):
    # float32 data at mean 1e4, std 1: a float32 NumPy computation loses digits, normkit does not.
    x = (1e4 + rng.standard_normal((64, 1024))).astype(np.float32)
    y = normkit.layer_norm(x)
    y_ref = ref_forward(x, None, None)[0]
    err = np.abs(y - y_ref).max()
    naive = normkit.reference.layer_norm_forward(x)[0]
    assert err < 2e-6
    assert np.abs(naive - y_ref).max() > 10 * err


def test_multiple_trailing_axes(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    gamma, beta = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    y, mean, rstd = normkit.layer_norm_forward(x, gamma, beta, axis=(-2, -1))
    assert mean.shape == rstd.shape == (2, 3)
    y_ref, mean_ref, _ = ref_forward(x, gamma, beta, axis=(2, 3))
    assert_close(y, y_ref, np.float64, "y")
    assert_close(mean, mean_ref, np.float64, "mean")
    # Same result as flattening the normalized axes.
    y_flat = normkit.layer_norm(x.reshape(2, 3, 20), gamma.ravel(), beta.ravel())
    np.testing.assert_array_equal(y, y_flat.reshape(x.shape))
    dy = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = normkit.layer_norm_backward(dy, x, mean, rstd, gamma, axis=(2, 3))
    dx_ref, dgamma_ref, dbeta_ref = ref_backward(dy, x, mean, rstd, gamma, axis=(2, 3))
    assert dgamma.shape == dbeta.shape == (4, 5)
    assert_close(dx, dx_ref, np.float64, "dx")
    assert_close(dgamma, dgamma_ref, np.float64, "dgamma")
    assert_close(dbeta, dbeta_ref, np.float64, "dbeta")


def test_whole_array_axis_gives_scalar_statistics(rng):
    x = rng.standard_normal(10)
    y, mean, rstd = normkit.layer_norm_forward(x)
    assert mean.shape == () and rstd.shape == ()
    assert_close(mean, np.mean(x), np.float64, "mean")


@pytest.mark.parametrize("shape", [(3, 5), (2, 17), (1, 33), (4, 1)], ids=str)
def test_backward_matches_finite_differences(isa, rng, shape):
    x = rng.standard_normal(shape) * 2 + 5
    gamma, beta = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    w = rng.standard_normal(shape)  # loss = sum(w * y), so dy = w

    def loss():
        return float(np.sum(w * normkit.layer_norm(x, gamma, beta)))

    _, mean, rstd = normkit.layer_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = normkit.layer_norm_backward(w, x, mean, rstd, gamma)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, numeric_grad(loss, gamma), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dbeta, numeric_grad(loss, beta), rtol=1e-5, atol=1e-7)


LAYOUTS = {
    "strided": lambda a: a[:, ::2],
    "fortran": lambda a: np.asfortranarray(a[:, : a.shape[1] // 2]),
    "negative": lambda a: a[::-1, ::-2],
    "transposed": lambda a: a.T[: a.shape[1] // 2, :].T,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs(rng, layout):
    base = rng.standard_normal((37, 66))
    x = LAYOUTS[layout](base)
    assert not x.flags.c_contiguous
    d = x.shape[-1]
    gamma = rng.standard_normal(2 * d)[::2]
    beta = rng.standard_normal(d)
    dy = LAYOUTS[layout](rng.standard_normal((37, 66)))
    y, mean, rstd = normkit.layer_norm_forward(x, gamma, beta)
    expected = normkit.layer_norm_forward(np.ascontiguousarray(x), gamma.copy(), beta)
    for a, b in zip((y, mean, rstd), expected):
        np.testing.assert_array_equal(a, b)
    grads = normkit.layer_norm_backward(dy, x, mean, rstd, gamma)
    expected = normkit.layer_norm_backward(np.ascontiguousarray(dy), x.copy(), mean, rstd, gamma)
    for a, b in zip(grads, expected):
        np.testing.assert_array_equal(a, b)


def test_inputs_are_not_modified(rng):
    x, dy = rng.standard_normal((8, 9)), rng.standard_normal((8, 9))
    gamma, beta = rng.standard_normal(9), rng.standard_normal(9)
    arrays = [x, dy, gamma, beta]
    copies = [a.copy() for a in arrays]
    _, mean, rstd = normkit.layer_norm_forward(x, gamma, beta)
    saved = [mean.copy(), rstd.copy()]
    normkit.layer_norm_backward(dy, x, mean, rstd, gamma)
    for a, c in zip(arrays + [mean, rstd], copies + saved):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(50, 70), (20, 768)], ids=str)
def test_out_and_in_place(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    expected = normkit.layer_norm(x, gamma, beta)
    out = np.empty_like(x)
    assert normkit.layer_norm(x, gamma, beta, out=out) is out
    np.testing.assert_array_equal(out, expected)
    inplace = x.copy()
    assert normkit.layer_norm(inplace, gamma, beta, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [64, 100, 128, 768])
def test_misaligned_out_of_a_streamed_array(isa, cols, dtype):
    # Outputs from the streaming size on are written with aligned streaming stores; an out=
    # array that starts off the vector alignment takes another path (an aligning head per row)
    # and must give the same bits, in place too.
    rng = np.random.default_rng(10)
    rows = streamed_rows(cols, dtype)
    x = rng.standard_normal((rows, cols)).astype(dtype)
    gamma, beta = rng.standard_normal(cols).astype(dtype), rng.standard_normal(cols).astype(dtype)
    expected = normkit.layer_norm(x, gamma, beta)
    buffer = np.empty(rows * cols + 1, dtype)
    out = buffer[1:].reshape(rows, cols)  # one element past an aligned start
    assert out.ctypes.data % 64 != 0
    normkit.layer_norm(x, gamma, beta, out=out)
    np.testing.assert_array_equal(out, expected)
    out[...] = x
    normkit.layer_norm(out, gamma, beta, out=out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
# 1001, 3001: rows of no whole number of vectors or lines; 768: rows in pairs
@pytest.mark.parametrize("cols", [768, 1001, 3001])
def test_streamed_rows_of_odd_length_give_the_bits_of_a_small_array(isa, cols, dtype):
    # From the streaming size on, long rows are written in spans that end on the output's cache
    # lines (wherever the row starts), and the backward of rows that are not whole vectors goes
    # row by row instead of in groups: per row, the arithmetic of a small array's rows.
    rng = np.random.default_rng(11)
    rows = streamed_rows(cols, dtype, 3)
    x = rng.standard_normal((rows, cols)).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    gamma, beta = rng.standard_normal(cols).astype(dtype), rng.standard_normal(cols).astype(dtype)
    y, mean, rstd = normkit.layer_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = normkit.layer_norm_backward(dy, x, mean, rstd, gamma)
    pick = [0, 1, 2, 3, 5, 8, rows // 2, rows - 1]  # rows at each offset into a cache line
    y_few, mean_few, rstd_few = normkit.layer_norm_forward(x[pick], gamma, beta)
    np.testing.assert_array_equal(y[pick], y_few)
    np.testing.assert_array_equal(mean[pick], mean_few)
    np.testing.assert_array_equal(rstd[pick], rstd_few)
    dx_few, _, _ = normkit.layer_norm_backward(dy[pick], x[pick], mean_few, rstd_few, gamma)
    np.testing.assert_array_equal(dx[pick], dx_few)
    _, dgamma_ref, dbeta_ref = ref_backward(dy, x, mean, rstd, gamma)
    xhat = (x.astype(np.float64) - mean[:, None]) * rstd[:, None]
    assert_close(dgamma, dgamma_ref, dtype, "dgamma", sum_scale(np.abs(dy * xhat).sum(0)))
    assert_close(dbeta, dbeta_ref, dtype, "dbeta", sum_scale(np.abs(dy).sum(0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_streamed_rows_in_pairs_without_gamma(isa, dtype):
    # A streamed backward of rows of one chunk goes in pairs (dx of a row written in the loop
    # that sums the next); without gamma it takes its own instance: the bits of a small array.
    rng = np.random.default_rng(12)
    cols = 768
    rows = streamed_rows(cols, dtype, 3)
    x = (rng.standard_normal((rows, cols)) * 2 + 50).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    y, mean, rstd = normkit.layer_norm_forward(x)
    dx, dgamma, dbeta = normkit.layer_norm_backward(dy, x, mean, rstd)
    assert dgamma is None and dbeta is None
    pick = [0, 1, rows // 2, rows - 2, rows - 1]
    dx_few, _, _ = normkit.layer_norm_backward(dy[pick], x[pick], mean[pick], rstd[pick])
    np.testing.assert_array_equal(dx[pick], dx_few)
    dx_ref = ref_backward(dy[pick], x[pick], mean[pick], rstd[pick], None)[0]
    assert_close(dx[pick], dx_ref, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("last_rows", [14, 15])
def test_streamed_rows_in_pairs_add_every_row_once(isa, last_rows, dtype):
    # A streamed backward of rows of one chunk adds two rows' dgamma/dbeta contributions per
    # load of its accumulators, but not across a flush (every 16 rows) or the end of a block or
    # a task: the last flush holds last_rows rows (blocks hold whole flushes), an even or an odd
    # count, and on two threads the first task ends after a block of whole flushes.
    rng = np.random.default_rng(13)
    cols = 768
    rows = streamed_rows(cols, dtype)
    rows += (last_rows - rows % 16) % 16
    x = (rng.standard_normal((rows, cols)) * 2 + 1e4).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    gamma = rng.standard_normal(cols).astype(dtype)
    check_large_backward(x, dy, gamma, [0, 1, 15, 16, rows - 2, rows - 1])


def check_large_backward(x, dy, gamma, pick):
    """The backward of a large array: the same bits on 1 and 2 threads, the rows in ``pick`` the
    bits of a backward of those rows alone, dgamma and dbeta the reference's."""
    _, mean, rstd = normkit.layer_norm_forward(x, gamma)
    assert_same_with_one_and_two_threads(
        lambda: normkit.layer_norm_backward(dy, x, mean, rstd, gamma)
    )
    dx, dgamma, dbeta = normkit.layer_norm_backward(dy, x, mean, rstd, gamma)
    dx_few, _, _ = normkit.layer_norm_backward(dy[pick], x[pick], mean[pick], rstd[pick], gamma)
    np.testing.assert_array_equal(dx[pick], dx_few)
    _, dgamma_ref, dbeta_ref = ref_backward(dy, x, mean, rstd, gamma)
    xhat = (x.astype(np.float64) - mean[:, None]) * rstd[:, None]
    assert_close(dgamma, dgamma_ref, x.dtype.type, "dgamma", sum_scale(np.abs(dy * xhat).sum(0)))
    assert_close(dbeta, dbeta_ref, x.dtype.type, "dbeta", sum_scale(np.abs(dy).sum(0)))


def test_out_overlapping_x_partially(rng):
    buf = rng.standard_normal(11 * 40)
    x = buf[:400].reshape(10, 40)
    expected = normkit.layer_norm(x.copy())
    out = buf[40:].reshape(10, 40)  # overlaps x shifted by one row
    normkit.layer_norm(x, out=out)
    np.testing.assert_array_equal(out, expected)


def test_out_holding_gamma_and_beta(rng):
    # gamma and beta are views into out: they are read as they were before out is written.
    x = rng.standard_normal((10, 40))
    out = rng.standard_normal((10, 40))
    gamma, beta = out[3], out[7, ::-1]
    expected = normkit.layer_norm(x, gamma.copy(), beta.copy())
    normkit.layer_norm(x, gamma, beta, out=out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [33, 128])  # short rows of any length; float32 128: 8 vectors
def test_nan_and_inf_stay_in_their_row(rng, cols, dtype):
    x = rng.standard_normal((4, cols)).astype(dtype)
    x[1, 5] = np.nan
    x[2, 7] = np.inf
    y, mean, rstd = normkit.layer_norm_forward(x)
    assert np.isnan(y[1]).all() and np.isnan(mean[1]) and np.isnan(rstd[1])
    assert not np.isfinite(y[2]).all()
    clean = normkit.layer_norm(x[[0, 3]])
    np.testing.assert_array_equal(y[[0, 3]], clean)
    dx, _, _ = normkit.layer_norm_backward(np.ones_like(x), x, mean, rstd)
    assert np.isfinite(dx[[0, 3]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows(dtype):
    x = np.empty((0, 5), dtype)
    gamma = np.ones(5, dtype)
    y, mean, rstd = normkit.layer_norm_forward(x, gamma, gamma)
    assert y.shape == (0, 5) and mean.shape == (0,) and y.dtype == dtype
    dx, dgamma, dbeta = normkit.layer_norm_backward(x, x, mean, rstd, gamma)
    assert dx.shape == (0, 5)
    np.testing.assert_array_equal(dgamma, np.zeros(5))
    np.testing.assert_array_equal(dbeta, np.zeros(5))


def test_constant_rows_are_zero_and_finite():
    x = np.full((3, 8), 7.0, np.float32)
    y = normkit.layer_norm(x)
    np.testing.assert_array_equal(y, np.zeros_like(x))


def test_eps_is_used(rng):
    x = rng.standard_normal((3, 10))
    _, _, rstd = normkit.layer_norm_forward(x, eps=0.5)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(axis=-1) + 0.5), rtol=1e-14)


def test_output_dtype_follows_input(rng):
    for dtype in DTYPES:
        x = rng.standard_normal((3, 4)).astype(dtype)
        y, mean, rstd = normkit.layer_norm_forward(x)
        assert y.dtype == mean.dtype == rstd.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5000), (2, 70001), (16, 4097), (300, 129)], ids=str)
def test_parameter_gradients_of_a_zero_gradient_are_positive_zeros(isa, shape, dtype):
    # dgamma and dbeta are sums from +0: a gradient of -0 everywhere (dy * xhat = -0 for the
    # positive xhat) must give +0, as float64 partials do; few long rows (the first three
    # shapes) accumulate straight into dgamma and dbeta.
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) + 1e4).astype(dtype)
    dy = np.full(shape, -0.0, dtype=dtype)
    gamma = rng.standard_normal(shape[-1]).astype(dtype)
    _, mean, rstd = normkit.layer_norm_forward(x, gamma)
    _, dgamma, dbeta = normkit.layer_norm_backward(dy, x, mean, rstd, gamma)
    for grad in (dgamma, dbeta):
        assert np.array_equal(grad, np.zeros_like(grad))
        assert not np.signbit(grad).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape",
    # (100, 5000): rows in parallel on one thread, rows split by chunk on two; (300, 768): rows
    # in pairs, 19 blocks of rows shared out differently
    [
        (1, 262144),
        (3, 100003),
        (3000, 129),
        (1001, 100),
        (300, 4097),
        (100, 5000),
        (300, 768),
        (70000, 3),
    ],
    ids=str,
)
def test_threads_give_bitwise_identical_results(isa, shape, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[-1]).astype(dtype)
    beta = rng.standard_normal(shape[-1]).astype(dtype)

    def compute():
        y, mean, rstd = normkit.layer_norm_forward(x, gamma, beta)
        return (y, mean, rstd, *normkit.layer_norm_backward(dy, x, mean, rstd, gamma))

    assert_same_with_one_and_two_threads(compute)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [3, 64, 100, 256])
def test_row_results_do_not_depend_on_neighbouring_rows(isa, cols, dtype):
    # Short rows are reduced several at a time; dropping the first row moves every other row
    # to another position in its group, which must not change a single bit of its result.
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((37, cols)) * 3 + 1e4).astype(dtype)
    y, mean, rstd = normkit.layer_norm_forward(x)
    y1, mean1, rstd1 = normkit.layer_norm_forward(x[1:])
    assert np.array_equal(y[1:], y1)
    assert np.array_equal(mean[1:], mean1) and np.array_equal(rstd[1:], rstd1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [64, 100, 128, 256, 768, 1000, 4096])
def test_row_results_do_not_depend_on_array_size(isa, cols, dtype):
    # Arrays from the streaming size on are read in a different order (each short row's shift
    # found as the pass reaches it, not for a whole group up front; longer rows normalized a
    # KiB at a time between prefetches); the same rows must give the same bits as in a small
    # array.
    rng = np.random.default_rng(9)
    rows = streamed_rows(cols, dtype)
    x = (rng.standard_normal((rows, cols)) * 3 + 1e4).astype(dtype)
    y, mean, rstd = normkit.layer_norm_forward(x)
    for part in (slice(0, 37), slice(rows - 37, rows)):  # first rows, and the last ones
        y1, mean1, rstd1 = normkit.layer_norm_forward(x[part])
        assert np.array_equal(y[part], y1)
        assert np.array_equal(mean[part], mean1) and np.array_equal(rstd[part], rstd1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [64, 100, 128, 768, 1000, 4096])
def test_backward_rows_do_not_depend_on_array_size(isa, cols, dtype):
    # Streamed, dx is written with streaming stores (short rows: whole rows inline where dx's
    # rows are vector-aligned, as NumPy's are for the baseline's 16-byte vectors; longer ones
    # between prefetches of the next rows, a group's tiles with gamma on AVX2/AVX-512, a KiB of
    # a row at a time otherwise); each row's dx must be the same bits as in a small array
    # (dgamma/dbeta sum over all rows).
    rng = np.random.default_rng(10)
    rows = streamed_rows(cols, dtype)
    x = (rng.standard_normal((rows, cols)) * 3 + 1e4).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    gamma = rng.standard_normal(cols).astype(dtype)
    _, mean, rstd = normkit.layer_norm_forward(x, gamma)
    dx = normkit.layer_norm_backward(dy, x, mean, rstd, gamma)[0]
    for part in (slice(0, 37), slice(rows - 37, rows)):  # first rows, and the last ones
        dx1 = normkit.layer_norm_backward(dy[part], x[part], mean[part], rstd[part], gamma)[0]
        assert np.array_equal(dx[part], dx1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [768, 1001, 5000])
def test_backward_streams_below_the_forwards_size(isa, cols, dtype):
    # The backward streams dx from two thirds of the forward's size on (its call moves three
    # arrays to the forward's two), so an array just past that line takes the streamed paths
    # (768: rows in pairs; 1001: row by row a KiB at a time; 5000: two chunks a row, in groups)
    # while its forward does not (check_large_backward).
    rng = np.random.default_rng(14)
    rows = streamed_backward_rows(cols, dtype)
    assert rows < streamed_rows(cols, dtype, 0)
    x = (rng.standard_normal((rows, cols)) * 3 + 1e4).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    gamma = rng.standard_normal(cols).astype(dtype)
    first_and_last = [*range(37), *range(rows - 37, rows)]
    check_large_backward(x, dy, gamma, first_and_last)


def test_concurrent_python_threads(rng):
    xs = [rng.standard_normal((257, 300)).astype(np.float32) for _ in range(4)]
    expected = [normkit.layer_norm(x) for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(20):
            results[i] = normkit.layer_norm(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        np.testing.assert_array_equal(r, e)


def test_y_scale_condition_term_only_for_float64():
    y = np.ones(3)
    assert y_scale(y, np.array([1e4]), np.array([1.0]), np.float32) == 1.0
    assert y_scale(y, np.array([1e4]), np.array([1.0]), np.float64) == 1.0 + 1e4
