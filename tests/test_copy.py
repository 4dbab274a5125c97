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


@pytest.mark.parametrize("offset", [0, 16, 4000])
def test_yardstick_source_shares_the_destinations_page_offset(offset):
    # (A source 16 bytes behind its destination modulo 4 KiB made small copies 10x slower.)
    from normkit.bench import _at_page_offset_of

    base = np.empty(8192 + 100_000, np.uint8)
    start = (-base.ctypes.data) % 4096 + offset
    dst = base[start : start + 98_304]
    src = _at_page_offset_of(dst)
    assert src.ctypes.data % 4096 == dst.ctypes.data % 4096 == offset
    assert src.nbytes == dst.nbytes and src.flags.c_contiguous and src.flags.writeable
    src.fill(7)
    _core.copy(dst, src)
    assert (dst == 7).all()
