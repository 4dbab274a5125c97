"""How normkit's OpenMP threads wait between kernels.

OpenMP threads normally spin for milliseconds after each parallel region, waiting for more work.
In a NumPy program the next piece of work is usually a matrix product on NumPy's BLAS threads,
which then has to wait for those spinning threads to give up the cores: a LayerNorm after a
256x256 matmul took 8 ms instead of 0.25 ms on a 2-core machine. So normkit's OpenMP runtime is
loaded with OMP_WAIT_POLICY=PASSIVE (its threads sleep between kernels) unless the environment
already says how OpenMP threads should wait. The runtime reads the setting once, when it loads
with the extension; the environment is restored right after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

wait_policy = "PASSIVE (normkit default)"


@contextlib.contextmanager
def loading_extension() -> Iterator[None]:
    """Context for importing ``normkit._core``: sets the wait policy unless the user set one."""
    global wait_policy
    chosen = {name: os.environ[name] for name in _USER_SETTINGS if name in os.environ}
    if chosen:
        wait_policy = ", ".join(f"{k}={v}" for k, v in chosen.items()) + " (environment)"
        yield
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        del os.environ["OMP_WAIT_POLICY"]
