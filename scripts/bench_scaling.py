"""Walkers per second and step time at 1, 2 and 4 devices and at 1 and 2 processes.

Every layout runs the same `vmc run` (float64, fixed seed, `--preset tiny` sizes unless
overridden) as separate processes on 127.0.0.1; the per-step training energies must agree
across layouts (to 1e-8 relative: only the reduction order differs), or the script fails.
Timings are the median step time over the steps after the first (compilation excluded), with
the ratio to one device. On a 2-core CPU the devices are forced host devices sharing the same
cores, so the timings mean little; on a GPU node (one device per GPU) they are the scaling
figure.

    python scripts/bench_scaling.py [--config tests/data/h2_tiny.yaml] [--steps 20]
        [--walkers 64] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vmc import h5io  # noqa: E402

LAYOUTS = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)]   # (processes, devices per process)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_layout(out: pathlib.Path, processes: int, devices: int, args: list[str]) -> dict:
    """One `vmc run` with this layout; returns train.h5's /stats columns."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "VMC_JAX_CACHE": str(ROOT / ".jax_cache")}
    cmd = [sys.executable, "-m", "vmc.cli", "run", *args, "--out", str(out)]
    if processes == 1:
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)]
    else:
        port = _port()
        procs = [subprocess.Popen([*cmd, "--coordinator", f"127.0.0.1:{port}",
                                   "--num-processes", str(processes), "--process-id", str(i)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(processes)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"error: layout {processes}x{devices} failed:\n{err[-3000:]}")
    return h5io.read_stats(out / "train.h5")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "tests" / "data" / "h2_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--walkers", type=int, default=64)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)
    args = [a.config, "--preset", "tiny", "--set", "run.x64=true", "--set",
            f"optim.steps={a.steps}", "--set", f"sampler.walkers={a.walkers}", "--set",
            "eval.steps=0", "--set", "run.checkpoint_every=1000000"]
    for o in a.overrides:
        args += ["--set", o]
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for processes, devices in LAYOUTS:
            stats = run_layout(pathlib.Path(tmp) / f"p{processes}d{devices}", processes,
                               devices, args)
            step = float(np.median(stats["step_time"][1:]))
            if reference is None:
                reference = (stats["energy"], step)
            same = np.allclose(stats["energy"], reference[0], rtol=1e-8, atol=0)
            rows.append((processes, devices, step, a.walkers / step, reference[1] / step, same,
                         float(np.max(np.abs(stats["energy"] - reference[0])))))
    print(f"{a.config}: {a.walkers} walkers, {a.steps} steps, float64; median step time "
          f"after the first; ratio = speed-up against 1 process x 1 device")
    print(f"{'processes':>9} {'devices':>7} {'total':>5} {'s/step':>8} {'walkers/s':>10} "
          f"{'speed-up':>8} {'max|dE| Ha':>11} same")
    for p, d, step, wps, ratio, same, dev in rows:
        print(f"{p:>9} {d:>7} {p * d:>5} {step:>8.4f} {wps:>10.1f} {ratio:>8.2f} "
              f"{dev:>11.2e} {'yes' if same else 'NO'}")
    ok = all(r[5] for r in rows)
    print("PASS: every layout gives the same energies" if ok
          else "FAIL: a layout gave different energies")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
