"""How long normkit's OpenMP threads spin between kernels.

OpenMP threads spin after each parallel region, waiting for more work; libgomp's default is
300,000 spins, milliseconds on current CPUs. In a NumPy program the next piece of work is
usually a matrix product on NumPy's BLAS threads, which then waits for those spinning threads to
give up the cores: a (256, 1024) matmul followed by a LayerNorm took 8 ms per step instead of
3.2 ms on a 2-core machine. Not spinning at all (OMP_WAIT_POLICY=PASSIVE) has the opposite
cost: every kernel then wakes sleeping threads, 100-200 us on a virtual machine, more than a
mid-size kernel takes.

So normkit's OpenMP runtime is loaded with GOMP_SPINCOUNT=5000 (about 0.1 ms): back-to-back
kernels find their threads awake, and a matrix product that follows finds them asleep. This
applies unless the environment already says how OpenMP threads should wait. The runtime reads
the setting once, when it loads with the extension; the environment is restored right after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SPIN_COUNT = "5000"

wait_policy = f"GOMP_SPINCOUNT={SPIN_COUNT} (normkit default)"


@contextlib.contextmanager
def loading_extension() -> Iterator[None]:
    """Context for importing ``normkit._core``: sets the spin count unless the user chose."""
    global wait_policy
    chosen = {name: os.environ[name] for name in _USER_SETTINGS if name in os.environ}
    if chosen:
        wait_policy = ", ".join(f"{k}={v}" for k, v in chosen.items()) + " (environment)"
        yield
        return
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        yield
    finally:
        del os.environ["GOMP_SPINCOUNT"]
