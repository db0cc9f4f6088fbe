"""Walkers sharded over several devices give the same run as one device."""

import pathlib
import subprocess
import sys

import numpy as np

from helpers import host_devices_env
from vmc import h5io
from vmc.parallel import cpu_devices_warning


def _run(out, cfg, devices):
    env = host_devices_env(devices)
    proc = subprocess.run([sys.executable, "-m", "vmc.cli", "run", str(cfg), "--out", str(out),
                           "--preset", "tiny", "--set", "run.x64=true", "--set", "optim.steps=6",
                           "--set", "eval.steps=0"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return h5io.read_stats(out / "train.h5")


def test_two_devices_match_one(tmp_path):
    cfg = tmp_path / "h2.yaml"
    cfg.write_text("atoms:\n  - {symbol: H, position: [0, 0, -0.7]}\n"
                   "  - {symbol: H, position: [0, 0, 0.7]}\n")
    one = _run(tmp_path / "one", cfg, 1)
    two = _run(tmp_path / "two", cfg, 2)
    # same random numbers (partitionable threefry), only the reduction order differs
    np.testing.assert_allclose(two["energy"], one["energy"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(two["width"], one["width"], rtol=1e-10)
    assert np.ptp(one["energy"]) > 1e-3   # the steps really moved
    # two CPU devices in one process: the hang warning, in run.log; one device: none
    assert "CPU devices in this process" not in (tmp_path / "one" / "run.log").read_text()
    warned = [ln for ln in (tmp_path / "two" / "run.log").read_text().splitlines()
              if "warning: 2 CPU devices in this process" in ln]
    assert len(warned) == 1 and "Known hang" in warned[0]


def test_cpu_devices_warning_only_for_several_cpu_devices():
    assert "4 CPU devices" in cpu_devices_warning("cpu", 4)
    assert cpu_devices_warning("cpu", 1) is None
    assert cpu_devices_warning("gpu", 8) is None
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    assert "**Known hang" in readme.read_text()   # the section the warning points to
