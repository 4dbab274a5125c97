"""Property-based checks: random shapes, axes, offsets and dtypes against the reference."""

import numpy as np
from checks import check_batch_norm, check_layer_norm
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
