"""The benchmarks' copy yardstick (_core.copy): every byte arrives, whether the copy streams
its stores (from info()["stream_threshold_bytes"] on) or not, at any alignment."""

import normkit
import numpy as np
import pytest
from normkit import _core


@pytest.mark.parametrize("extra", [-1, 0, 77])
@pytest.mark.parametrize("offset", [0, 1, 13])
def test_copy_moves_every_byte(extra, offset):
    n = normkit.info()["stream_threshold_bytes"] + extra
    rng = np.random.default_rng(100 + extra + offset)
    src = rng.integers(0, 256, n + offset, dtype=np.uint8)[offset:]
    dst_base = np.zeros(n + offset, np.uint8)
    dst = dst_base[offset:]  # misaligned from offset 1 on
    _core.copy(dst, src)
    assert np.array_equal(dst, src)
    assert not dst_base[:offset].any()


@pytest.mark.parametrize("n", [1, 15, 64, 1000])
def test_small_copies(n):
    src = np.arange(n, dtype=np.uint8)
    dst = np.zeros(n, np.uint8)
    _core.copy(dst, src)
    assert np.array_equal(dst, src)
