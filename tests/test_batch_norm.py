"""BatchNorm: reference, worked example, running statistics, layouts, threads, layer, errors."""

import math

import normkit
import numpy as np
import pytest
from checks import (
    BN_CASES,
    assert_close,
    assert_same_with_one_and_two_threads,
    check_batch_norm,
    numeric_grad,
    streamed_rows,
)
from normkit import BatchNorm, reference

DTYPES = [np.float32, np.float64]
# (runs of whole vectors, 4x4 and 8x8 planes, go a run at a time in the element-wise passes)
LAYOUTS = BN_CASES + [
    ((8, 16, 7, 7), 1),
    ((2, 5, 4100), 1),
    ((3, 130), 1),
    ((1, 4, 2), 1),
    ((3, 37, 4, 4), 1),
    ((2, 7, 8, 8), 1),
    # a table of 1030 features: its backward sums a task of 1024 columns and one of 6 per block
    ((260, 1030), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", LAYOUTS, ids=str)
@pytest.mark.parametrize("offset", [0.0, 1e4], ids=["mean0", "mean1e4"])
def test_matches_reference(isa, shape, axis, dtype, offset):
    check_batch_norm(shape, axis, dtype, mean_offset=offset)


# Channels-last tables whose rows hold no whole number of vectors fold several rows into one
# row of the column table (3 float32 features: 8 rows of 24 values with AVX2); the rows left
# over after the last whole fold, and tables of fewer rows than a fold, go apart.
FOLDED = [
    ((1003, 3), -1),
    ((5, 3), -1),
    ((2, 7), -1),
    ((9, 10), -1),
    ((67, 100), -1),
    ((301, 3, 5), 1),
    ((37, 6, 2, 3), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", FOLDED, ids=str)
def test_folded_tables_match_reference(isa, shape, axis, dtype):
    check_batch_norm(shape, axis, dtype, mean_offset=1e4)


# Planes of fewer than 16 values (the column layout with s > 1) expand each per-channel array
# to the table's columns a vector at a time, permuting a vector of channels: periods of
# lcm(s, width) columns, then single values once the next vector of channels would pass the last.
# Inference and the training forward on at most 32 rows go by groups of channels (the last one
# partial), expanding each group's constants; 40 rows expand the whole table's.
SHORT_PLANES = [
    ((3, 37, 6), 1),
    ((2, 300, 5), 1),
    ((4, 129, 3, 3), 1),
    ((2, 70, 15), 1),
    ((5, 41, 2), 1),
    ((3, 2, 2, 530, 7), 3),
    ((40, 70, 3), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", SHORT_PLANES, ids=str)
def test_short_planes_of_many_channels_match_reference(isa, shape, axis, dtype):
    check_batch_norm(shape, axis, dtype, mean_offset=1e4)


@pytest.mark.parametrize("shape, axis", [((6, 5, 17), 1), ((40, 9), -1)], ids=str)
def test_without_affine(isa, shape, axis):
    check_batch_norm(shape, axis, np.float64, affine=False)


def test_worked_example_from_the_errata():
    x = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    rm, rv = np.zeros(2), np.ones(2)
    y, mean, invstd = normkit.batch_norm_forward(x, rm, rv, training=True, eps=1e-5)
    np.testing.assert_allclose(mean, [0.3, 0.4], rtol=1e-15)
    np.testing.assert_allclose(1 / invstd**2 - 1e-5, [0.026667] * 2, rtol=2e-5)
    np.testing.assert_allclose(y[:, 0], [-1.2245153, 0.0, 1.2245153], atol=5e-8)
    np.testing.assert_allclose(rm, [0.03, 0.04], rtol=1e-14)
    np.testing.assert_allclose(rv, [0.904, 0.904], rtol=1e-14)  # unbiased 0.04 enters
    y0 = normkit.batch_norm(x, training=True, eps=0.0)
    np.testing.assert_allclose(y0[:, 1], [-1.2247449, 0.0, 1.2247449], atol=5e-8)


def test_running_statistics_over_several_steps(rng):
    rm, rv = np.zeros(3), np.ones(3)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    for step in range(5):
        x = rng.standard_normal((16, 3, 4)) * (step + 1) + step
        normkit.batch_norm(x, rm, rv, training=True, momentum=0.3)
        m = x.mean(axis=(0, 2))
        v = x.var(axis=(0, 2), ddof=1)
        rm_ref = 0.7 * rm_ref + 0.3 * m
        rv_ref = 0.7 * rv_ref + 0.3 * v
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-13)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-13)


def test_cumulative_average_with_momentum_none(rng):
    layer = BatchNorm(4, momentum=None, dtype=np.float64)
    batches = [rng.standard_normal((10, 4)) * 2 + k for k in range(6)]
    for x in batches:
        layer(x)
    assert layer.num_batches_tracked == 6
    np.testing.assert_allclose(
        layer.running_mean, np.mean([b.mean(0) for b in batches], 0), rtol=1e-13
    )
    np.testing.assert_allclose(
        layer.running_var, np.mean([b.var(0, ddof=1) for b in batches], 0), rtol=1e-13
    )


def test_momentum_none_is_refused_by_the_function(rng):
    with pytest.raises(ValueError, match="momentum=None"):
        normkit.batch_norm(
            rng.standard_normal((4, 2)), np.zeros(2), np.ones(2), training=True, momentum=None
        )


def test_eval_uses_running_statistics_and_train_the_batch(rng):
    x = rng.standard_normal((20, 3)) * 3 + 2
    rm, rv = np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.5, 2.0])
    y_eval, mean, invstd = normkit.batch_norm_forward(x, rm, rv, eps=0.0)
    np.testing.assert_allclose(y_eval, (x - rm) / np.sqrt(rv), rtol=1e-14)
    np.testing.assert_array_equal(mean, rm)
    np.testing.assert_array_equal(rm, [1.0, 2.0, 3.0])  # not updated in eval
    y_train = normkit.batch_norm(x, rm.copy(), rv.copy(), training=True, eps=0.0)
    np.testing.assert_allclose(y_train, (x - x.mean(0)) / x.std(0), rtol=1e-12, atol=1e-13)
    # Without running statistics, inference falls back to batch statistics.
    np.testing.assert_allclose(normkit.batch_norm(x, eps=0.0), y_train, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_constants_are_the_correctly_rounded_formula(isa, rng, dtype):
    # The kernels take a vector of channels' square roots and divisions at a time: every
    # channel, those of the last partial vector too, gets exactly 1 / sqrt(var + eps) rounded
    # once in float64, then to dtype (37 channels: a tail for every vector width).
    c = 37
    x = rng.standard_normal((3, c)).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(1e-3, 10.0, c).astype(dtype)
    rv[5] = 0.0
    _, mean, invstd = normkit.batch_norm_forward(x, rm, rv, eps=1e-5)
    np.testing.assert_array_equal(mean, rm)
    np.testing.assert_array_equal(
        invstd, (1.0 / np.sqrt(rv.astype(np.float64) + 1e-5)).astype(dtype)
    )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape, axis", [((4, 3, 5), 1), ((6, 4), -1), ((2, 3, 2, 3), 1)], ids=str)
def test_backward_matches_finite_differences(isa, rng, shape, axis, training):
    c = shape[axis]
    x = rng.standard_normal(shape) * 2 + 3
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    w = rng.standard_normal(shape)

    def loss():
        y = normkit.batch_norm(x, rm.copy(), rv.copy(), gamma, beta, training=training, axis=axis)
        return float(np.sum(w * y))

    _, mean, invstd = normkit.batch_norm_forward(
        x, rm.copy(), rv.copy(), gamma, beta, training=training, axis=axis
    )
    dx, dgamma, dbeta = normkit.batch_norm_backward(
        w, x, mean, invstd, gamma, training=training, axis=axis
    )
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, numeric_grad(loss, gamma), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dbeta, numeric_grad(loss, beta), rtol=1e-5, atol=1e-7)


def test_channels_last_equals_channels_first(rng):
    x = rng.standard_normal((4, 6, 5, 3))  # N, H, W, C
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    y_last, mean, invstd = normkit.batch_norm_forward(
        x, None, None, gamma, beta, training=True, axis=-1
    )
    x_first = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    y_first, mean1, invstd1 = normkit.batch_norm_forward(
        x_first, None, None, gamma, beta, training=True
    )
    np.testing.assert_allclose(np.moveaxis(y_first, 1, -1), y_last, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(mean, mean1, rtol=1e-14)
    np.testing.assert_allclose(invstd, invstd1, rtol=1e-13)


@pytest.mark.parametrize("layout", ["strided", "fortran", "negative"])
def test_non_contiguous_input(rng, layout):
    base = rng.standard_normal((8, 6, 10))
    x = {
        "strided": base[:, ::2],
        "fortran": np.asfortranarray(base),
        "negative": base[::-1, :, ::-1],
    }[layout]
    assert not x.flags.c_contiguous
    dy = rng.standard_normal(x.shape)[::-1]
    got = normkit.batch_norm_forward(x, training=True)
    expected = normkit.batch_norm_forward(np.ascontiguousarray(x), training=True)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    grads = normkit.batch_norm_backward(dy, x, got[1], got[2])
    expected = normkit.batch_norm_backward(np.ascontiguousarray(dy), x.copy(), got[1], got[2])
    for a, b in zip(grads, expected):
        np.testing.assert_array_equal(a, b)


def test_inputs_not_modified_but_running_statistics_are(rng):
    x, dy = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 3))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    copies = [a.copy() for a in (x, dy, gamma, beta)]
    rm, rv = np.zeros(4), np.ones(4)
    _, mean, invstd = normkit.batch_norm_forward(x, rm, rv, gamma, beta, training=True)
    normkit.batch_norm_backward(dy, x, mean, invstd, gamma)
    for a, c in zip((x, dy, gamma, beta), copies):
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(rm, np.zeros(4))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(6, 3, 7), (5, 3, 37), (3, 4, 16)])
def test_out_in_place(isa, rng, shape, training):
    # (6, 3, 7): the column layout; (5, 3, 37): runs, whose vectors cross from one channel's run
    # into the next; (3, 4, 16): runs exactly one AVX-512 float32 vector long.
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    rm, rv = rng.standard_normal(c).astype(np.float32), np.full(c, 2.0, np.float32)
    expected = normkit.batch_norm(x, rm.copy(), rv.copy(), training=training)
    normkit.batch_norm(x, rm.copy(), rv.copy(), training=training, out=x)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_out_overlapping_its_inputs(rng, training):
    # x shifted by one image against out, gamma and beta views into out: each is read as it was
    # before out is written.
    buf = rng.standard_normal(7 * 3 * 5)
    x, out = buf[:90].reshape(6, 3, 5), buf[15:].reshape(6, 3, 5)
    gamma, beta = out[0, 1, :3], out[5, :, 4]
    rm, rv = rng.standard_normal(3), np.full(3, 2.0)
    args = (x.copy(), rm.copy(), rv.copy(), gamma.copy(), beta.copy())
    expected = normkit.batch_norm(*args, training=training)
    normkit.batch_norm(x, rm, rv, gamma, beta, training=training, out=out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_misaligned_out_of_a_streamed_array(isa, layout, training):
    # Outputs from the streaming size on are written with aligned streaming stores; an out=
    # array that starts off the vector alignment must give the same bits.
    rng = np.random.default_rng(11)
    threshold = normkit.info()["stream_threshold_bytes"]
    values = threshold // 4 + 7 * 50
    shape, axis = ((values // (7 * 50), 7, 50), 1) if layout == "nchw" else ((values // 24, 24), -1)
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    assert x.nbytes >= threshold
    c = shape[axis]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    gamma, beta = (
        rng.standard_normal(c).astype(np.float32),
        rng.standard_normal(c).astype(np.float32),
    )
    kw = dict(training=training, axis=axis)
    expected = normkit.batch_norm(x, rm.copy(), rv.copy(), gamma, beta, **kw)
    buffer = np.empty(x.size + 1, np.float32)
    out = buffer[1:].reshape(shape)  # one element past an aligned start
    assert out.ctypes.data % 64 != 0
    normkit.batch_norm(x, rm.copy(), rv.copy(), gamma, beta, out=out, **kw)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [64, 96])  # rows of whole cache lines: tiles when aligned
def test_streamed_channels_last_inputs_off_a_cache_line_give_the_same_bits(isa, cols, dtype):
    # From memory, the statistics of inputs whose rows do not cover whole cache lines go along
    # the rows instead of down them in register tiles: the same operations per column. The
    # aligned copy takes the tiles, the one 16 bytes past a line the rows.
    rng = np.random.default_rng(12)
    rows = streamed_rows(cols, dtype, 5)
    buffer = np.empty(rows * cols + 16, dtype)
    start = -buffer.ctypes.data % 64 // buffer.itemsize  # first value on a cache line
    aligned = buffer[start : start + rows * cols].reshape(rows, cols)
    aligned[...] = rng.standard_normal((rows, cols)) * 3 + 1e4
    off = np.empty(rows * cols + 16, dtype)
    skew = (-off.ctypes.data % 64 + 16) // off.itemsize  # 16 bytes past a cache line
    shifted = off[skew : skew + rows * cols].reshape(rows, cols)
    shifted[...] = aligned
    assert aligned.ctypes.data % 64 == 0 and shifted.ctypes.data % 64 == 16
    for x in (aligned, shifted):
        y, mean, invstd = normkit.batch_norm_forward(x, training=True, axis=-1)
        if x is aligned:
            expected = (y, mean, invstd)
        else:
            for got, want in zip((y, mean, invstd), expected):
                np.testing.assert_array_equal(got, want)
    check_batch_norm((rows, cols), -1, dtype, mean_offset=1e4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [528, 1030])
def test_streamed_wide_tables_match_reference(isa, cols, dtype):
    # From memory, the statistics and the backward's sums of tables wider than a column group
    # (256) go along the rows, a page of each row per task: 528 columns (whole cache lines,
    # which took register tiles before) in one task of float32 or two of float64, 1030 in a
    # task of a page and one of 6 columns (float32) past the last vector.
    rows = streamed_rows(cols, dtype, 5)
    check_batch_norm((rows, cols), 1, dtype, mean_offset=1e4)


# Tables of at most 32 rows whose rows hold whole vectors go through training and inference a
# group of 256 columns at a time (statistics, constants, output); 33 rows take the whole-table
# passes. (BN_CASES has one too, so that it also runs under qemu.)
FEW_ROWS = [((2, 1000), -1), ((32, 520), -1), ((33, 520), -1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", FEW_ROWS, ids=str)
def test_few_rows_of_many_channels_match_reference(isa, shape, axis, dtype):
    check_batch_norm(shape, axis, dtype, mean_offset=1e4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [16, 32])
def test_few_rows_beyond_l2_match_reference(isa, rows, dtype):
    # Inference on tables of 16 to 32 rows whose x and y overflow one core's L2 takes groups of
    # a page of each row, not kColGroup columns; the last group is partial and ends in a tail
    # shorter than a vector.
    itemsize = np.dtype(dtype).itemsize
    cols = normkit.info()["l2_cache_bytes"] // (2 * rows * itemsize) + 1500 + 3
    check_batch_norm((rows, cols), -1, dtype, mean_offset=1e4)
    # the same with planes of 9 values: groups of whole channels, their constants expanded
    check_batch_norm((rows, cols // 9 + 1, 3, 3), 1, dtype, mean_offset=1e4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [2, 7, 32])
def test_streamed_few_rows_give_the_same_bits_off_a_cache_line(isa, rows, dtype):
    # Few rows by column group, streamed: the statistics take register tiles on an aligned copy
    # (rows of whole cache lines: 48 more columns than whole groups) and go along the rows on
    # one 16 bytes past a line; forward and backward give the same bits, and match the float64
    # reference.
    rng = np.random.default_rng(13)
    itemsize = np.dtype(dtype).itemsize
    cols = (normkit.info()["stream_threshold_bytes"] // (rows * itemsize) // 256 + 1) * 256 + 48
    assert cols * itemsize % 64 == 0
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    gamma, beta = rng.standard_normal(cols).astype(dtype), rng.standard_normal(cols).astype(dtype)
    results = []
    for skew_bytes in (0, 16):
        buffer = np.empty(rows * cols + 16, dtype)
        skew = (-buffer.ctypes.data % 64 + skew_bytes) // itemsize
        x = buffer[skew : skew + rows * cols].reshape(rows, cols)
        assert x.ctypes.data % 64 == skew_bytes
        x[...] = np.random.default_rng(14).standard_normal((rows, cols)) * 3 + 1e4
        y, mean, invstd = normkit.batch_norm_forward(x, None, None, gamma, beta, training=True)
        results.append((y, mean, invstd, *normkit.batch_norm_backward(dy, x, mean, invstd, gamma)))
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)
    check_batch_norm((rows, cols), -1, dtype, mean_offset=1e4)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_streamed_arrays_match_reference(isa, layout):
    # From the streaming size on, the whole-array passes prefetch their inputs ahead (NCHW-like
    # runs of 196 values, channels-last rows of 64); training and eval, forward and backward,
    # at mean 1e4, against the float64 reference.
    values = normkit.info()["stream_threshold_bytes"] // 4 + 1000
    if layout == "nchw":
        shape, axis = (values // (5 * 196) + 1, 5, 14, 14), 1
    else:
        shape, axis = (values // 64 + 1, 64), -1
    check_batch_norm(shape, axis, np.float32, mean_offset=1e4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((8, 3, 40000), 1),
        ((2, 64, 3000), 1),
        ((70000, 5), -1),
        ((300, 1024), 1),
        ((4, 2, 70001), 1),
        # summed on two threads, too small for the dx pass alone to go parallel: it does on
        # the threads the sums pass left spinning
        ((8, 512, 7, 7), 1),
        ((3000, 50), -1),
        ((70001, 3), -1),  # folded rows, one row of x left over
        ((20, 2056), -1),  # by column group: 9 groups, the last of 8 columns
        # one block of rows of 4 column groups: the backward's sums go in one task on one thread,
        # in two of 2 groups on two
        ((100, 1000), 1),
    ],
    ids=str,
)
def test_threads_give_bitwise_identical_results(isa, shape, axis, dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) + 50).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)

    def compute():
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        y, mean, invstd = normkit.batch_norm_forward(
            x, rm, rv, gamma, beta, training=True, axis=axis
        )
        grads = normkit.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
        y_eval = normkit.batch_norm(x, rm, rv, gamma, beta, axis=axis)
        eval_grads = normkit.batch_norm_backward(
            dy, x, mean, invstd, gamma, training=False, axis=axis
        )
        return (y, mean, invstd, rm, rv, y_eval, *grads, *eval_grads)

    assert_same_with_one_and_two_threads(compute)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [49, 4099], ids=["unit_a_run", "two_units_a_run"])
def test_runs_of_many_channels_past_l2_match_reference(isa, s, dtype):
    # The whole-array passes over runs add each channel's units (chunks of at most 4096 values)
    # image by image, blocks of 256 channels at a time: 300 channels make a full block and part
    # of one, on arrays past one L2 (smaller ones of short runs go a channel at a time).
    info = normkit.info()
    c = 300
    n = info["l2_cache_bytes"] // (2 * c * s * np.dtype(dtype).itemsize) + 2
    check_batch_norm((n, c, s), 1, dtype, mean_offset=1e4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane", [(17, 19), (7, 7)], ids=["17x19", "7x7"])
def test_channel_at_a_time_gives_the_bits_of_whole_array_passes(isa, dtype, plane):
    # Training arrays larger than the last-level cache whose channels fit in L2 go a channel at
    # a time per thread: the AVX-512 build on two threads or more (whole-array passes on one),
    # the others on any thread count for runs of 1 KiB and more. 1 and 2 threads: same bits.
    # Odd runs of over 1 KiB, and of 49 values, which go four runs at a time (grouped_runs):
    # unaligned starts, vector tails, and a last group of fewer runs. The other builds keep
    # 49-value runs on the whole-array passes on both thread counts, where the groups then
    # start at each thread's own first unit.
    info = normkit.info()
    itemsize = np.dtype(dtype).itemsize
    s = plane[0] * plane[1]
    n = max(info["l2_cache_bytes"] // (8 * 2 * s * itemsize), 2) | 3  # last group: 3 runs
    c = info["last_level_cache_bytes"] // (n * s * itemsize) + 3
    if n * c * s * itemsize > 1 << 30:
        pytest.skip("last-level cache too large for a test array")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((n, c, *plane)) + 50).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)

    def compute():
        y, mean, invstd = normkit.batch_norm_forward(x, None, None, gamma, beta, training=True)
        return (y, mean, invstd, *normkit.batch_norm_backward(dy, x, mean, invstd, gamma))

    assert_same_with_one_and_two_threads(compute)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inputs", [1, 2], ids=["forward", "backward"])
def test_three_large_channels_give_the_bits_of_whole_array_passes(isa, dtype, inputs):
    # Builds without AVX-512 go a channel at a time on one thread too, when two channels (of x,
    # and dy in the backward) fit in the last-level cache and there are at least two channels
    # per thread: with 3 channels that is 1 thread, never 2, which checks the one against the
    # whole-array passes (each of the forward and the backward, whose channels are sized apart).
    llc = normkit.info()["last_level_cache_bytes"]
    itemsize = np.dtype(dtype).itemsize
    channel_bytes = int(llc * (0.45 if inputs == 1 else 0.22))
    if llc == 0 or 3 * channel_bytes > 1 << 30:
        pytest.skip("last-level cache unknown or too large for a test array")
    s = 17 * 19
    n = channel_bytes // (s * itemsize) | 1
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((n, 3, s)) + 50).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma = rng.standard_normal(3).astype(dtype)

    def compute():
        y, mean, invstd = normkit.batch_norm_forward(x, None, None, gamma, None, training=True)
        if inputs == 1:
            return (y, mean, invstd)
        return normkit.batch_norm_backward(dy, x, mean, invstd, gamma)

    assert_same_with_one_and_two_threads(compute)


@pytest.mark.parametrize("beyond", ["last_level_cache_bytes", "l2_cache_bytes"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_blocks_give_the_bits_of_whole_array_passes(isa, dtype, beyond):
    # A training backward over x and dy larger than the last-level cache (builds without
    # AVX-512), or than the threads' L2 caches (AVX-512 build: dx then below the streaming
    # threshold, stored through the cache), with runs of 512 B to 1 KiB, goes a block of
    # adjacent channels at a time, all threads on each block. Each channel's gradients must be
    # those of the whole-array passes, which a copy of some of the channels takes: k channels,
    # x and dy of them past one L2 (smaller ones go a channel at a time, short_runs_in_cache)
    # and within two, on 2 threads (the AVX-512 build's blocks start past the threads' L2s).
    # The first k channels and the last k, across the last, partial block, are compared, on 1
    # and 2 threads.
    info = normkit.info()
    cache = info[beyond] * (2 if beyond == "l2_cache_bytes" else 1)
    itemsize = np.dtype(dtype).itemsize
    h, w = (13, 11) if dtype == np.float32 else (9, 9)  # odd runs of 572 and 648 bytes
    n = 37
    channel_bytes = n * h * w * itemsize
    k = max(info["l2_cache_bytes"] // (2 * channel_bytes) + 1, 3)
    c = max(cache // (2 * channel_bytes) + 2, 2 * k)
    while c % 2 == 0 or c % 7 == 0:  # a last block of fewer channels (8 or 7 a block)
        c += 1
    if cache == 0 or n * c * h * w * itemsize > 1 << 30:
        pytest.skip("cache size unknown or too large for a test array")
    assert 2 * n * c * h * w * itemsize > cache  # x and dy
    assert info["l2_cache_bytes"] < 2 * k * channel_bytes <= 2 * info["l2_cache_bytes"]
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((n, c, h, w)) * 3 + 1e4).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma = rng.standard_normal(c).astype(dtype)
    _, mean, invstd = normkit.batch_norm_forward(x, None, None, gamma, None, training=True)
    before = normkit.get_num_threads()
    try:
        normkit.set_num_threads(2)
        few = {}
        for sel in (slice(0, k), slice(c - k, c)):
            few[sel.start] = normkit.batch_norm_backward(
                np.ascontiguousarray(dy[:, sel]),
                np.ascontiguousarray(x[:, sel]),
                mean[sel],
                invstd[sel],
                gamma[sel],
            )
        for threads in (1, 2):
            normkit.set_num_threads(threads)
            grads = normkit.batch_norm_backward(dy, x, mean, invstd, gamma)
            for sel in (slice(0, k), slice(c - k, c)):
                for got, want in zip(grads, few[sel.start]):
                    assert np.array_equal(got[:, sel] if got.ndim > 1 else got[sel], want)
    finally:
        normkit.set_num_threads(before)


@pytest.mark.parametrize("axis", [1, -1])
def test_float32_statistics_of_2_pow_24_values(axis):
    # 2^24 float32 values per channel at mean 1e4, std 1: a float32 running sum would stall
    # (1e4 * 2^24 is past float32's exact range); normkit's mean and variance stay exact.
    rng = np.random.default_rng(0)
    n = 1 << 24
    x64 = 1e4 + rng.standard_normal(n)
    x = x64.astype(np.float32)
    shape = (1, 1, n) if axis == 1 else (n, 1)
    _, mean, invstd = normkit.batch_norm_forward(x.reshape(shape), training=True, axis=axis)
    xd = x.astype(np.float64)
    true_mean = xd.mean()
    true_var = np.mean((xd - true_mean) ** 2)
    assert abs(float(mean[0]) - true_mean) <= 1e-3  # within an ulp of 1e4 in float32
    np.testing.assert_allclose(float(invstd[0]), 1 / np.sqrt(true_var + 1e-5), rtol=2e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["sorted", "far_first_rows"])
@pytest.mark.parametrize(
    "shape", [(1000, 70), (1000, 24, 4), (24, 60, 5), (300, 3, 49), (40, 2, 4099)], ids=str
)
def test_ordered_batch_statistics_stay_exact(isa, shape, order, dtype):
    # Channels-last and small-spatial tables take each block's shift from its first rows, runs
    # of 16 values and more (the last two shapes) and small planes of at most 32 images (24, 60,
    # 5) one shift per channel, its first value. Here
    # those values sit far from the mean (sorted along the batch, or the first 16 samples of
    # every 256 shifted by 100 std), which makes the runs redo such channels around their mean;
    # the statistics must still be exact to the output's rounding.
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) + 1e4
    if order == "sorted":
        x = np.sort(x, axis=0)
    else:
        x[np.arange(shape[0]) % 256 < 16] += 100.0
    x = x.astype(dtype)
    _, mean, invstd = normkit.batch_norm_forward(x, training=True, axis=1)
    columns = np.moveaxis(x.astype(np.float64), 1, -1).reshape(-1, shape[1]).T
    true_mean = np.array([math.fsum(col) / col.size for col in columns])
    true_var = np.array(
        [math.fsum((col - m) ** 2) / col.size for col, m in zip(columns, true_mean)]
    )
    # Rounding to dtype, plus a few float64 roundings: block means are merged relative to each
    # channel's first value, so the merge does not lose digits to |mean| / std (1e4 here).
    mean_tol = np.spacing(np.asarray(true_mean, dtype)) + 4 * np.spacing(true_mean)
    assert np.all(np.abs(mean - true_mean) <= mean_tol)
    rtol = 2 * np.finfo(dtype).eps + 8 * np.finfo(np.float64).eps
    np.testing.assert_allclose(invstd, 1 / np.sqrt(true_var + 1e-5), rtol=rtol)


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((64, 3, 1000), 1),
        ((16, 5, 49), 1),
        ((1000, 70), 1),
        ((1000, 24, 4), 1),
        ((8, 60, 5), 1),
        ((4096, 3), -1),
    ],
    ids=str,
)
def test_float32_values_whose_squares_overflow(isa, shape, axis):
    # float32 sums of squared deviations overflow past 1.8e19 from the shift; those chunks and
    # columns are summed again in float64 instead of coming out with invstd = 0.
    rng = np.random.default_rng(12)
    x = (1 + rng.standard_normal(shape)).astype(np.float32)
    x[0] = -1e20
    x[-1] = 3e25
    y, mean, invstd = normkit.batch_norm_forward(x, training=True, axis=axis)
    y_ref, mean_ref, invstd_ref = reference.batch_norm_forward(
        x.astype(np.float64), training=True, axis=axis
    )
    assert_close(y, y_ref, np.float32, "y")
    assert_close(invstd, invstd_ref, np.float32, "invstd")
    assert_close(mean, mean_ref, np.float32, "mean")


@pytest.mark.parametrize("shape", [(2, 3, 20), (4, 2, 300)], ids=str)
def test_constant_runs_near_the_float64_maximum(isa, shape):
    # Runs take each channel's shift from the mean of its first vector, summed as values /
    # width: their plain sum would overflow here. The statistics stay exact.
    levels = np.array([1.5e308, -1.7e308, 1e308][: shape[1]])
    x = np.broadcast_to(levels[:, None], shape).copy()
    y, mean, invstd = normkit.batch_norm_forward(x, training=True, axis=1)
    np.testing.assert_array_equal(mean, levels)
    np.testing.assert_array_equal(invstd, np.full(shape[1], 1 / np.sqrt(1e-5)))
    np.testing.assert_array_equal(y, np.zeros(shape))


@pytest.mark.parametrize("skew_bytes", [0, 16])
@pytest.mark.parametrize(
    "shape",
    [(21, 1), (40, 3), (300, 64), (4, 300), (40, 3, 2, 2), (3, 3, 5), (600, 2, 3), "streamed 64"],
    ids=str,
)
def test_constant_columns_near_the_float64_maximum(isa, shape, skew_bytes):
    # The column layout's shifts are means of a few rows: near the largest values their sum
    # overflows, or rounds, and the squared deviations overflow from a shift an ulp off. Those
    # columns are summed again around a value of the channel, where a constant one gives
    # deviations of 0. Cases: rows left after the last fold (a count not a power of two), folded
    # rows and their rest, register tiles, few rows by column group, planes of 4 and 5 values,
    # and arrays past the streaming threshold, whose statistics go along the rows 16 bytes past
    # a cache line and take tiles aligned.
    if isinstance(shape, str):
        cols = int(shape.split()[1])
        shape = (streamed_rows(cols, np.float64), cols)
    levels = np.resize([1.5e308, -1.7e308, 1e308, -1e308, 0.5], shape[1])
    size = int(np.prod(shape))
    buffer = np.empty(size + 8)
    skew = (-buffer.ctypes.data % 64 + skew_bytes) // 8
    x = buffer[skew : skew + size].reshape(shape)
    x[...] = levels.reshape((1, -1) + (1,) * (len(shape) - 2))
    y, mean, invstd = normkit.batch_norm_forward(x, training=True, axis=1)
    np.testing.assert_array_equal(mean, levels)
    np.testing.assert_array_equal(invstd, np.full(shape[1], 1 / np.sqrt(1e-5)))
    np.testing.assert_array_equal(y, np.zeros(shape))
    dy = np.ones(shape)
    dx, dgamma, dbeta = normkit.batch_norm_backward(dy, x, mean, invstd, np.ones(shape[1]))
    np.testing.assert_array_equal(dx, np.zeros(shape))
    np.testing.assert_array_equal(dgamma, np.zeros(shape[1]))
    np.testing.assert_array_equal(dbeta, np.full(shape[1], size / shape[1]))


def test_against_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((8, 3, 5, 5))
    gamma, beta, dy = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(x.shape)
    rm, rv = np.zeros(3), np.ones(3)
    rm_t, rv_t = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    for _ in range(3):
        yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, gt, bt, training=True, momentum=0.1)
        y, mean, invstd = normkit.batch_norm_forward(x, rm, rv, gamma, beta, training=True)
    yt.backward(torch.tensor(dy))
    dx, dgamma, dbeta = normkit.batch_norm_backward(dy, x, mean, invstd, gamma)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, rm_t.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, rv_t.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


# --- the layer -----------------------------------------------------------------------------


def test_layer_train_eval_and_backward(rng):
    layer = BatchNorm(3, dtype=np.float64)
    x = rng.standard_normal((10, 3, 4)) * 2 + 1
    y = layer(x)
    assert layer.num_batches_tracked == 1
    np.testing.assert_allclose(layer.running_mean, 0.1 * x.mean(axis=(0, 2)), rtol=1e-13)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    _, mean, invstd = reference.batch_norm_forward(x, training=True)
    dx_ref, dg_ref, db_ref = reference.batch_norm_backward(dy, x, mean, invstd, layer.gamma)
    assert_close(dx, dx_ref, np.float64, "dx")
    assert_close(layer.grad_gamma, dg_ref, np.float64, "dgamma")
    assert_close(layer.grad_beta, db_ref, np.float64, "dbeta")
    assert [n for n, _, _ in layer.params_and_grads()] == ["gamma", "beta"]

    layer.eval()
    y_eval = layer(x)
    assert layer.num_batches_tracked == 1  # eval does not track
    expected = (x - layer.running_mean[:, None]) / np.sqrt(layer.running_var[:, None] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-13)
    dx_eval = layer.backward(dy)
    np.testing.assert_allclose(dx_eval, dy / np.sqrt(layer.running_var[:, None] + 1e-5), rtol=1e-13)
    assert not np.allclose(y, y_eval)  # train-mode and eval-mode outputs differ


def test_layer_without_running_statistics(rng):
    layer = BatchNorm(2, track_running_stats=False, dtype=np.float64).eval()
    x = rng.standard_normal((7, 2))
    np.testing.assert_allclose(layer(x), normkit.batch_norm(x), rtol=1e-14)
    assert "running_mean" not in layer.state_dict()


def test_layer_state_dict_round_trip(rng):
    a = BatchNorm(3, axis=-1)
    for _ in range(3):
        a(rng.standard_normal((5, 3)).astype(np.float32))
    state = a.state_dict()
    assert set(state) == {"gamma", "beta", "running_mean", "running_var", "num_batches_tracked"}
    b = BatchNorm(3, axis=-1)
    b.load_state_dict(state)
    assert b.num_batches_tracked == 3
    np.testing.assert_array_equal(b.running_var, a.running_var)
    with pytest.raises(KeyError):
        b.load_state_dict({"gamma": state["gamma"]})


def test_layer_errors():
    with pytest.raises(ValueError, match="expected 3 channels"):
        BatchNorm(3)(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        BatchNorm(3).eval()(np.ones((4, 5), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        BatchNorm(3).backward(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=1.5)
    with pytest.raises(TypeError, match="momentum: expected a real number"):
        BatchNorm(3, momentum="0.5")


def test_fold_into_dense_layer(rng):
    w, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    bn = BatchNorm(4, dtype=np.float64)
    for _ in range(3):  # collect running statistics, then give gamma/beta values
        bn(rng.standard_normal((32, 6)) @ w.T + b)
    bn.gamma[...] = rng.standard_normal(4)
    bn.beta[...] = rng.standard_normal(4)
    bn.eval()
    x = rng.standard_normal((9, 6))
    w2, b2 = normkit.fold_batch_norm(w, b, bn)
    np.testing.assert_allclose(x @ w2.T + b2, bn(x @ w.T + b), rtol=1e-12, atol=1e-12)
    w3, b3 = normkit.fold_batch_norm(w, None, bn)
    np.testing.assert_allclose(x @ w3.T + b3, bn(x @ w.T), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="expected 5 features"):
        normkit.fold_batch_norm(np.ones((5, 6)), None, bn)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 2, 1, 1)])
def test_training_needs_two_values_per_channel(shape):
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*got input of shape"):
        normkit.batch_norm(np.ones(shape), training=True)


@pytest.mark.parametrize(
    "rm, message",
    [
        (
            np.zeros(3, np.float64),
            "running_mean: expected a writeable C-contiguous float32 array of shape \\(3,\\), got float64",
        ),
        (np.zeros(4, np.float32), r"shape \(3,\), got float32 array of shape \(4,\)"),
        (np.zeros(6, np.float32)[::2], "not contiguous"),
        ([0.0, 0.0, 0.0], "numpy.ndarray"),
    ],
)
def test_bad_running_statistics(rm, message):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=message):
        normkit.batch_norm(x, rm, np.ones(3, np.float32), training=True)


def test_running_statistics_go_together():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="together"):
        normkit.batch_norm(x, np.zeros(3), None, training=True)


def test_read_only_running_statistics():
    rm = np.zeros(3)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        normkit.batch_norm(np.ones((4, 3)), rm, np.ones(3), training=True)


def test_bn_shape_and_dtype_errors(rng):
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        normkit.batch_norm(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3,\), got \(2,\)"):
        normkit.batch_norm(x, gamma=np.ones(2, np.float32))
    with pytest.raises(TypeError, match="beta: expected dtype float32"):
        normkit.batch_norm(x, beta=np.ones(3))
    _, mean, invstd = normkit.batch_norm_forward(x, training=True)
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 3, 2\)"):
        normkit.batch_norm_backward(x[:2], x, mean, invstd)
    with pytest.raises(ValueError, match=r"invstd: expected shape \(3,\), got \(2,\)"):
        normkit.batch_norm_backward(x, x, mean, invstd[:2])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        normkit.batch_norm(np.ones(3, np.float32))
    with pytest.raises(normkit._checks.AxisError):
        normkit.batch_norm(x, axis=3)
    with pytest.raises(TypeError, match="axis"):
        normkit.batch_norm(x, axis=(1, 2))
    with pytest.raises(ValueError, match="eps"):
        normkit.batch_norm(x, eps=np.nan)
    with pytest.raises(ValueError, match="momentum"):
        normkit.batch_norm(x, momentum=np.inf)
    with pytest.raises(TypeError, match="momentum: expected a real number"):
        normkit.batch_norm(x, training=True, momentum="0.1")


def test_nan_stays_in_its_channel(rng):
    x = rng.standard_normal((5, 3, 4))
    x[2, 1, 3] = np.nan
    y = normkit.batch_norm(x, training=True)
    assert np.isnan(y[:, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all()


@pytest.mark.parametrize("training", [False, True])
def test_empty_batch_backward_gives_zero_parameter_gradients(training):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    gamma = np.ones(5, np.float32)
    _, mean, invstd = normkit.batch_norm_forward(x, training=True, axis=-1)
    # a call with sums first, so that scratch memory reused by the next call holds nonzeros
    normkit.batch_norm_backward(x, x, mean, invstd, gamma, training=training, axis=-1)
    empty = np.empty((0, 5), np.float32)
    dx, dgamma, dbeta = normkit.batch_norm_backward(
        empty, empty, mean, invstd, gamma, training=training, axis=-1
    )
    assert dx.shape == (0, 5)
    np.testing.assert_array_equal(dgamma, np.zeros(5))
    np.testing.assert_array_equal(dbeta, np.zeros(5))


def test_zero_batch_in_inference():
    x = np.empty((0, 3), np.float32)
    y = normkit.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32))
    assert y.shape == (0, 3)
    with pytest.raises(ValueError):
        normkit.batch_norm(x, training=True)
