"""FermiNet vs Psiformer on Li and LiH, with and without Hartree–Fock pretraining.

    python scripts/pretrain_compare.py --out runs/pretrain_compare --steps 2000 \
        [--pretrain-steps 1000] [--systems Li LiH] [--ansatz ferminet psiformer] \
        [--preset tiny] [--set KEY=VALUE ...]

Runs `vmc run` once per (system, ansatz, pretraining on/off) as a subprocess, all with the
same number of VMC steps (`optim.steps`) and the same seed, pretraining on meaning
`pretrain.steps=--pretrain-steps` and off `pretrain.steps=0`. The Psiformer gets its Jastrow
factor (`ansatz.jastrow=true`, as in von Glehn et al. 2023) unless `--no-psiformer-jastrow`.
Then prints a table from each run's summary.json and train.h5: energy ± reblocked error, error
against the exact energy, the mean training-energy error over the windows of WINDOWS (what
pretraining buys early on), parameter count and wall time (pretraining included). A finished run directory is reused (delete it to rerun), so the
script can be restarted after an interruption.

The full comparison takes hours on a CPU; `--steps 5 --pretrain-steps 5 --preset tiny`
checks that the pipeline works in a few minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

EXACT = {"Li": -7.478060323, "LiH": -8.070548}
WINDOWS = ((0, 100), (400, 500), (900, 1000))   # VMC steps [start, stop) of training means
SYSTEMS = {
    "Li": ("atoms:\n  - {symbol: Li, position: [0.0, 0.0, 0.0]}\nunits: bohr\ncharge: 0\n"
           "spin: 1\nreference: {energy: -7.478060323, kind: exact, source: 'Puchalski & "
           "Pachucki (2008)'}\n"),
    "LiH": ("atoms:\n  - {symbol: Li, position: [0.0, 0.0, 0.0]}\n"
            "  - {symbol: H, position: [3.015, 0.0, 0.0]}\nunits: bohr\ncharge: 0\nspin: 0\n"
            "reference: {energy: -8.070548, kind: exact, source: 'Cencek & Rychlewski (2000)'}\n"),
}


def run_one(out: pathlib.Path, system: str, ansatz: str, pretrain: bool, args) -> dict:
    """One `vmc run` (skipped if its summary.json exists); returns a table row."""
    label = f"{system}-{ansatz}-{'pre' if pretrain else 'nopre'}"
    run_dir = out / label
    config = out / f"{system}.yaml"
    sets = [f"ansatz.name={ansatz}", f"optim.steps={args.steps}",
            f"pretrain.steps={args.pretrain_steps if pretrain else 0}",
            f"run.seed={args.seed}", "run.progress=false"]
    if ansatz == "psiformer" and args.psiformer_jastrow:
        sets.append("ansatz.jastrow=true")
    sets += args.overrides
    row = {"label": label, "system": system, "ansatz": ansatz, "pretrain": pretrain}
    summary = run_dir / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "vmc.cli", "run", str(config), "--out", str(run_dir)]
        if args.preset:
            cmd += ["--preset", args.preset]
        for s in sets:
            cmd += ["--set", s]
        print(f"[{label}] {' '.join(cmd[2:])}", flush=True)
        start = time.time()
        with open(out / f"{label}.log", "w") as logf:
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode
        row["wall_s"] = time.time() - start
        if rc != 0 or not summary.exists():
            row["error"] = f"exit {rc}, see {out / (label + '.log')}"
            return row
    s = json.loads(summary.read_text())
    row.update(energy=s["energy_ha"], stderr=s["energy_stderr_ha"],
               wall_s=s.get("wall_s", row.get("wall_s")), n_params=s.get("n_params"))
    from vmc.h5io import read_stats
    energy = np.asarray(read_stats(run_dir / "train.h5")["energy"], float)
    row["windows"] = [1e3 * (np.nanmean(energy[a:b]) - EXACT[system]) if energy.size >= b
                      else float("nan") for a, b in WINDOWS]
    return row


def _fmt(row: dict) -> str:
    head = f"{row['system']:4} {row['ansatz']:9} {'on' if row['pretrain'] else 'off':8}"
    if "error" in row:
        return f"{head} failed: {row['error']}"
    e, se = row["energy"], row["stderr"]
    err = 1e3 * (e - EXACT[row["system"]]) if e is not None else float("nan")
    se_txt = f"{1e3 * se:7.2f}" if se is not None else "    n/a"
    windows = " ".join(f"{w:9.1f}" for w in row["windows"])
    return (f"{head} {e:12.6f} {se_txt} {err:10.2f} {windows} {row['n_params'] or 0:8d} "
            f"{row['wall_s'] or float('nan'):9.0f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/pretrain_compare", help="folder for all runs")
    p.add_argument("--steps", type=int, default=2000, help="VMC steps (optim.steps), all runs")
    p.add_argument("--pretrain-steps", type=int, default=1000, help="pretrain.steps when on")
    p.add_argument("--systems", nargs="+", default=list(EXACT), choices=list(EXACT))
    p.add_argument("--ansatz", nargs="+", default=["ferminet", "psiformer"],
                   choices=["ferminet", "psiformer"])
    p.add_argument("--preset", help="vmc run --preset (e.g. tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-psiformer-jastrow", dest="psiformer_jastrow", action="store_false")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.systems:
        (out / f"{name}.yaml").write_text(SYSTEMS[name])
    rows = [run_one(out, system, ansatz, pre, args) for system, ansatz, pre in
            itertools.product(args.systems, args.ansatz, (True, False))]
    print(f"\nVMC steps {args.steps}, pretraining steps {args.pretrain_steps} (when on)")
    print(f"{'sys':4} {'ansatz':9} {'pretrain':8} {'E (Ha)':>12} {'σ (mHa)':>7} "
          f"{'err (mHa)':>10} "
          + " ".join(f"{f'{a}-{b}':>9}" for a, b in WINDOWS)
          + f" {'params':>8} {'wall (s)':>9}")
    print("(columns a-b: mean training-energy error in mHa over VMC steps a..b-1)")
    for row in rows:
        print(_fmt(row))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
