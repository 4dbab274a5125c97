"""Threads, ISA and build information."""

from __future__ import annotations

import operator
from importlib import metadata

from . import _core, _openmp


def get_num_threads() -> int:
    """Threads normkit's kernels may use (default: OMP_NUM_THREADS or the CPU count)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Let kernels use up to ``n`` threads. Results do not depend on ``n``: they are bitwise
    identical for any thread count."""
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n: expected an int, got {n!r}") from None
    if n < 1:
        raise ValueError(f"n: expected a number of threads >= 1, got {n}")
    _core.set_num_threads(n)


def release_cached_memory() -> int:
    """Free the output buffers normkit keeps for reuse; returns the bytes freed.

    Outputs of 128 KiB or more are allocated from a cache: when such an array is freed its
    memory is kept (up to 1 GiB in all) for the next call of the same size, which then skips
    the page faults of fresh memory. Call this to hand that memory back to the system.
    """
    return int(_core.release_cached_memory())


def _version() -> str:
    try:
        return metadata.version("normkit")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "unknown"


def info() -> dict:
    """Build and runtime facts: version, active and available ISAs, threads, OpenMP (how its
    threads wait between kernels, whether they spin, so that a kernel's later passes may use
    them on less work than would pay for waking them, and for how long at least: small kernels
    called back to back within that time use them too; the spin count times the time of one
    spin, timed once at half the CPU's pause), bytes held in the output buffer cache, the
    output size from which kernels write with streaming stores (bypassing the caches; an
    eighth of the last-level cache, within 8-64 MiB; the LayerNorm backward's dx from two
    thirds of it), and the cache sizes the kernels plan with."""
    return {
        "version": _version(),
        "isa": _core.active_isa(),
        "isa_available": list(_core.available_isas()),
        "num_threads": _core.get_num_threads(),
        "openmp": bool(_core.openmp_enabled()),
        "omp_wait_policy": _openmp.wait_policy,
        "omp_threads_spin": bool(_core.threads_spin()),
        "omp_spin_time_ns": int(_core.spin_time_ns()),
        "omp_ns_per_spin": float(_core.ns_per_spin()),
        "cached_bytes": int(_core.cached_bytes()),
        "stream_threshold_bytes": int(_core.stream_threshold_bytes()),
        "l2_cache_bytes": int(_core.l2_cache_bytes()),
        "last_level_cache_bytes": int(_core.last_level_cache_bytes()),
    }
