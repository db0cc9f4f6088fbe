"""Shared test fixtures: float64 on demand and JAX's persistent compilation cache."""

import os
import pathlib

from vmc.cpu_env import configure_process

# the CLI's process settings (vmc.cpu_env), before NumPy/SciPy load OpenBLAS, whose LAPACK
# JAX's CPU linear algebra calls: a `vmc run` in this process and one in a subprocess then use
# the same single-threaded LAPACK (tests/test_resume.py compares the two bit for bit)
configure_process()
# The suite is mostly compilation (a fresh CI machine has no compilation cache): XLA's CPU
# backend at optimization level 0 compiles the same programs faster and runs them slower,
# which most of the suite's small networks and short runs do not notice (cold, -n 2: 702 s
# against 813 s at the default level; the sampling-bound ccECP HF test 93 s against 48 s,
# so tests/test_hf_vmc.py runs its checks in a child process at the default level).
# The `vmc` subprocesses the tests start inherit it, so runs compared bit for bit across
# processes see the same code. VMC_TEST_XLA_OPT=default keeps XLA's own level.
_OPT = "--xla_backend_optimization_level=0"
if os.environ.get("VMC_TEST_XLA_OPT", "0") == "0" and _OPT not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + _OPT

import jax  # noqa: E402
import pytest

_CACHE = pathlib.Path(os.environ.get("VMC_TEST_JAX_CACHE",
                                     pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
# `vmc.cli.main` called in this process (run.compile_cache: auto) and `vmc` subprocesses read
# the same folder, so a program compiled by one is loaded by the other
os.environ.setdefault("VMC_JAX_CACHE", str(_CACHE))
# every program is stored, however fast it compiled: the suite compiles the same small
# programs (init, burn-in, evaluation steps) in many tests; cold, -n 2, test_resume, test_cli
# and test_smoke_pairs took 147 s against 165 s at the CLI's 0.5 s threshold
os.environ.setdefault("VMC_JAX_CACHE_MIN_SECONDS", "0")
from vmc.compile_cache import min_compile_seconds  # noqa: E402
jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds())


@pytest.fixture
def x64():
    """Run the test with float64 enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield
