"""vmc.cpu_env: the process settings the CLI and the timing scripts share."""

import os
import subprocess
import sys

from vmc.cpu_env import DEADLOCK_FLAG, configure_process


def test_configure_process_sets_the_flag_once_and_keeps_a_user_thread_count(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    configure_process()
    configure_process()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", DEADLOCK_FLAG]
    assert os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    configure_process()
    assert os.environ["OMP_NUM_THREADS"] == "4"


def test_vmc_cli_configures_the_process_first(tmp_path):
    """`vmc` sets both at the start of main, for every subcommand, before anything it runs
    imports JAX, SciPy or PySCF (their BLAS reads OMP_NUM_THREADS when it loads)."""
    code = ("import os, sys; import vmc.cli as c\n"
            "try: c.main(['check', '--help'])\n"
            "except SystemExit: pass\n"
            "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('XLA_FLAGS'), "
            "'jax' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "XLA_FLAGS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    threads, flags, jax_loaded = out.stdout.split()[-3:]
    assert (threads, flags, jax_loaded) == ("1", DEADLOCK_FLAG, "False"), out.stdout
