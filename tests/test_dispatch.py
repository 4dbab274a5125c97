"""ISA dispatch (NORMKIT_ISA), thread control and info(), checked in fresh interpreters."""

import json
import os
import shutil
import subprocess
import sys

import normkit
import numpy as np
import pytest
from conftest import ISAS, run_python

CHECK = "import checks; checks.run_all(expected_isa={isa!r})"


def test_info_fields():
    info = normkit.info()
    assert set(info) >= {"version", "isa", "isa_available", "num_threads", "openmp"}
    assert info["isa"] in info["isa_available"]
    assert info["isa_available"][0] == "baseline"
    assert info["version"] == normkit.__version__
    assert isinstance(info["openmp"], bool)
    assert 8 << 20 <= info["stream_threshold_bytes"] <= 64 << 20


def test_outputs_from_128_kib_reuse_cached_memory():
    # An output of 128 KiB or more goes back to normkit's cache when freed (rounded up to
    # 64 KiB below 2 MiB, to 2 MiB above), and the next output of its size takes it from there.
    normkit.release_cached_memory()
    assert normkit.info()["cached_bytes"] == 0
    normkit.layer_norm(np.ones((8, 1023), np.float32))  # a 32 KiB output: plain allocation
    assert normkit.info()["cached_bytes"] == 0
    cached = 0
    for nbytes, block in ((8 * 512 * 49 * 4, 13 << 16), (5 << 20, 6 << 20)):
        x = np.ones(nbytes // 4, np.float32).reshape(8, -1)
        y = normkit.layer_norm(x)
        assert normkit.info()["cached_bytes"] == cached
        del y
        assert normkit.info()["cached_bytes"] == cached + block
        y = normkit.layer_norm(x)  # the cached block again
        assert normkit.info()["cached_bytes"] == cached
        np.testing.assert_allclose(y, 0.0)
        del y
        cached += block
    assert normkit.release_cached_memory() == cached
    assert normkit.info()["cached_bytes"] == 0


def run_with_openmp_env(code, env):
    """Run code in a fresh interpreter whose OpenMP wait settings are exactly `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=120,
    )


WAIT_POLICY = (
    "import os, normkit; "
    "print(normkit.info()['omp_wait_policy'], normkit.info()['omp_threads_spin']); "
    "print(os.environ.get('OMP_WAIT_POLICY', '-'), os.environ.get('GOMP_SPINCOUNT', '-'))"
)


@pytest.mark.parametrize(
    "env, policy, left",
    [
        ({}, "GOMP_SPINCOUNT=5000 (normkit default) True", "- -"),
        ({"OMP_WAIT_POLICY": "active"}, "OMP_WAIT_POLICY=active (environment) True", "active -"),
        ({"GOMP_SPINCOUNT": "1000"}, "GOMP_SPINCOUNT=1000 (environment) True", "- 1000"),
        (
            {"OMP_WAIT_POLICY": "passive"},
            "OMP_WAIT_POLICY=passive (environment) False",
            "passive -",
        ),
        ({"GOMP_SPINCOUNT": "0"}, "GOMP_SPINCOUNT=0 (environment) False", "- 0"),
    ],
)
def test_openmp_wait_policy_and_environment(env, policy, left):
    # normkit's OpenMP threads spin only briefly between kernels unless the user says
    # otherwise, and the environment is left as it was found. Threads that do not spin are not
    # counted on as awake for a kernel's later passes (threads_spin).
    result = run_with_openmp_env(WAIT_POLICY, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [policy, left]


@pytest.mark.parametrize(
    "env, spins",
    [
        ({}, 5000),  # normkit's GOMP_SPINCOUNT=5000
        ({"GOMP_SPINCOUNT": "2k"}, 2000),
        ({"GOMP_SPINCOUNT": "3M"}, 3_000_000),
        ({"GOMP_SPINCOUNT": "infinite"}, 2**64 - 1),
        ({"GOMP_SPINCOUNT": "99999999999999T"}, 2**64 - 1),  # no overflow
        ({"OMP_WAIT_POLICY": "active"}, 30_000_000_000),
        ({"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "5000"}, 0),
        ({"GOMP_SPINCOUNT": "0"}, 0),
    ],
)
def test_spin_time_follows_the_openmp_environment(env, spins):
    # The spin time is the runtime's spin count times one spin (timed, at least 1 ns), capped
    # at 1 s.
    code = "import normkit; i = normkit.info(); print(i['omp_spin_time_ns'], i['omp_ns_per_spin'])"
    result = run_with_openmp_env(code, env)
    assert result.returncode == 0, result.stderr
    spin_time, per_spin = result.stdout.split()
    assert 1.0 <= float(per_spin) < 1000.0
    assert int(spin_time) == min(10**9, int(spins * float(per_spin)))


BACK_TO_BACK = """
import numpy as np, normkit
rng = np.random.default_rng(5)
x = (rng.standard_normal((256, 64)) + 1e4).astype(np.float32)
dy = rng.standard_normal(x.shape).astype(np.float32)
xb = (rng.standard_normal((8, 512, 7, 7)) + 1e4).astype(np.float32)
dyb = rng.standard_normal(xb.shape).astype(np.float32)
g = rng.standard_normal(64).astype(np.float32)
def step():
    y, mean, rstd = normkit.layer_norm_forward(x, g, g)
    out = [y, mean, rstd, *normkit.layer_norm_backward(dy, x, mean, rstd, g)]
    yb, m, inv = normkit.batch_norm_forward(xb, training=True)
    return out + [yb, m, inv, *normkit.batch_norm_backward(dyb, xb, m, inv)]
normkit.set_num_threads(1)
want = step()
normkit.set_num_threads(2)
for _ in range(50):
    assert all(np.array_equal(a, b) for a, b in zip(step(), want))
print("same")
"""


def test_small_kernels_back_to_back_give_the_same_bits():
    # With threads that spin for a second (counted), small kernels called in a loop go to two
    # threads after the first few calls (back_to_back): the same bits as on one thread.
    result = run_python(BACK_TO_BACK, {"GOMP_SPINCOUNT": "infinite"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"


def test_auto_picks_the_best_available():
    result = run_python(CHECK.format(isa=ISAS[-1]), {"NORMKIT_ISA": "auto"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("isa", ISAS)
def test_forced_isa_runs_and_is_correct(isa):
    result = run_python(CHECK.format(isa=isa), {"NORMKIT_ISA": isa})
    assert result.returncode == 0, result.stderr
    assert f"ok {isa}" in result.stdout


def test_unknown_isa_fails_at_import():
    result = run_python("import normkit", {"NORMKIT_ISA": "sse9"})
    assert result.returncode != 0
    assert "unknown ISA 'sse9'" in result.stderr
    assert "baseline" in result.stderr  # says what is available


def test_omp_num_threads_sets_the_default():
    code = "import normkit; print(normkit.get_num_threads())"
    result = run_python(code, {"OMP_NUM_THREADS": "3"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_set_and_get_num_threads():
    before = normkit.get_num_threads()
    try:
        normkit.set_num_threads(1)
        assert normkit.get_num_threads() == 1
        assert normkit.info()["num_threads"] == 1
    finally:
        normkit.set_num_threads(before)


def test_cli_info_json():
    result = subprocess.run(
        [sys.executable, "-m", "normkit", "info", "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["isa"] == normkit.info()["isa"]


# --- portability: older CPUs emulated by qemu-user ------------------------------------------

QEMU = shutil.which("qemu-x86_64")
ON_CI = os.environ.get("CI") == "true"


def _qemu_or_skip():
    if QEMU is None:
        if ON_CI:
            pytest.fail("qemu-x86_64 is required on CI (apt-get install qemu-user)")
        pytest.skip("qemu-x86_64 not installed (apt-get install qemu-user)")
    return QEMU


@pytest.mark.slow
@pytest.mark.parametrize("cpu, expected", [("Westmere", "baseline"), ("Haswell", "avx2")])
def test_emulated_cpu_chooses_its_isa(cpu, expected):
    qemu = _qemu_or_skip()
    env = {"NORMKIT_ISA": "auto", "OMP_NUM_THREADS": "2"}
    result = run_python(CHECK.format(isa=expected), env, prefix=[qemu, "-cpu", cpu])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ok {expected}" in result.stdout


@pytest.mark.slow
def test_emulated_cpu_refuses_isa_it_lacks():
    qemu = _qemu_or_skip()
    result = run_python(
        "import normkit", {"NORMKIT_ISA": "avx2"}, prefix=[qemu, "-cpu", "Westmere"]
    )
    assert result.returncode != 0
    assert "NORMKIT_ISA=avx2" in result.stderr and "available: baseline" in result.stderr
