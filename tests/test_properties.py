"""Property-based checks: random shapes, axes, offsets and dtypes against the reference."""

import normkit
import numpy as np
from checks import assert_same_with_one_and_two_threads, check_batch_norm, check_layer_norm
from hypothesis import given, settings
from hypothesis import strategies as st

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64])
offsets = st.sampled_from([0.0, -3.0, 250.0, 1e4])


@settings(max_examples=60, deadline=None)
@given(
    batch=st.lists(st.integers(0, 5), max_size=2).map(tuple),
    width=st.integers(1, 300),
    dtype=dtypes,
    offset=offsets,
    seed=st.integers(0, 1000),
)
def test_layer_norm_any_shape(batch, width, dtype, offset, seed):
    check_layer_norm((*batch, width), dtype, mean_offset=offset, seed=seed)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes.filter(lambda s: len(s) >= 2),
    data=st.data(),
    dtype=dtypes,
    offset=offsets,
    seed=st.integers(0, 1000),
)
def test_batch_norm_any_layout(shape, data, dtype, offset, seed):
    axis = data.draw(st.sampled_from([1, -1]))
    c = shape[axis]
    if np.prod(shape) // c < 2:  # training needs two values per channel
        shape = (2, *shape)
        axis = axis if axis == -1 else 1
    check_batch_norm(shape, axis, dtype, mean_offset=offset, seed=seed)


# Larger random shapes: big enough (>= 2 x 128K values) that two threads split the work, with
# widths and spatial sizes around the kernels' boundaries (vector tails, the 16-value run
# threshold, 4096-value chunks, the 1 KiB short-row limit).
boundary_widths = st.one_of(
    st.integers(1, 300), st.integers(4080, 4112), st.integers(8184, 8200), st.integers(250, 260)
)
spatial = st.sampled_from([1, 2, 3, 15, 16, 17, 49, 196, 4095, 4096, 4097])


@settings(max_examples=20, deadline=None)
@given(width=boundary_widths, dtype=dtypes, offset=offsets, seed=st.integers(0, 1000))
def test_layer_norm_larger_shapes(width, dtype, offset, seed):
    rows = -(-262144 // width)  # at least 256K values
    check_layer_norm((rows, width), dtype, mean_offset=offset, seed=seed)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, width)) + offset).astype(dtype)
    dy = rng.standard_normal((rows, width)).astype(dtype)
    gamma = rng.standard_normal(width).astype(dtype)

    def compute():
        y, mean, rstd = normkit.layer_norm_forward(x, gamma, None)
        return (y, mean, rstd, *normkit.layer_norm_backward(dy, x, mean, rstd, gamma))

    assert_same_with_one_and_two_threads(compute)


@settings(max_examples=20, deadline=None)
@given(
    c=st.integers(1, 70),
    s=spatial,
    axis=st.sampled_from([1, -1]),
    dtype=dtypes,
    offset=offsets,
    seed=st.integers(0, 1000),
)
def test_batch_norm_larger_shapes(c, s, axis, dtype, offset, seed):
    n = max(2, -(-262144 // (c * s)))  # at least 256K values
    shape = (n, c, s) if axis == 1 else (n, s, c)
    check_batch_norm(shape, axis, dtype, mean_offset=offset, seed=seed)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(c).astype(dtype)

    def compute():
        y, mean, invstd = normkit.batch_norm_forward(
            x, None, None, gamma, None, training=True, axis=axis
        )
        return (
            y,
            mean,
            invstd,
            *normkit.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis),
        )

    assert_same_with_one_and_two_threads(compute)
