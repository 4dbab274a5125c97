import os
import subprocess
import sys

import normkit
import numpy as np
import pytest
from normkit import _core

ISAS = list(normkit.info()["isa_available"])


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test with each ISA this CPU has (switched in-process; NORMKIT_ISA is tested
    separately in subprocesses)."""
    before = _core.active_isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


def pytest_collection_modifyitems(items):
    """Run each case's ISAs one after another (pytest puts the isa fixture's parameter outermost),
    so that checks.py computes the case's float64 reference once for all of them."""
    first: dict = {}

    def case_of(item):
        spec = getattr(item, "callspec", None)
        if spec is None or "isa" not in spec.params:
            return item.nodeid
        others = tuple((k, repr(v)) for k, v in sorted(spec.params.items()) if k != "isa")
        return (item.path, item.originalname, others)

    order = {id(item): first.setdefault(case_of(item), i) for i, item in enumerate(items)}
    items.sort(key=lambda item: order[id(item)])  # (stable: a case's ISAs keep their order)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = normkit.get_num_threads()
    normkit.set_num_threads(request.param)
    yield request.param
    normkit.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def run_python(code: str, env_updates: dict | None = None, prefix: list | None = None, timeout=600):
    """Run ``code`` in a fresh interpreter (optionally under ``prefix``, e.g. qemu)."""
    env = dict(os.environ)
    env.update(env_updates or {})
    return subprocess.run(
        [*(prefix or []), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=os.path.dirname(__file__),
    )
