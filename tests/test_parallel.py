"""Walkers sharded over several devices give the same run as one device."""

import subprocess
import sys

import numpy as np

from helpers import host_devices_env
from vmc import h5io



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
