"""`vmc analyze RUN --export csv`: the per-step tables of a run as CSV files for pandas.

Writes, in the run directory (process-independent: `vmc analyze` runs in one process):

* ``train.csv``: one row per training step, the columns of train.h5 /stats in TRAIN_COLUMNS
  order (those present; any other column after them): step, energy (Ha, walker mean of the
  local energy), variance (Ha²), median (Ha), clip_fraction, pmove (acceptance rate), width
  (proposal width, bohr), lr, update_norm, constraint_scale, iterations (CG), residual (CG),
  rejected (running count of rejected steps), bad_walkers, step_time (s), damping (λ of
  F + λI: sample, dense, cg, nystrom-cg, kfac-cg; NaN for kfac, adam, spring), fallbacks
  (centred-KFAC layers that fell back), cosine_uncentred, cosine_centred, cosine_applied
  (optim.kfac_cosines; NaN otherwise);
* ``eval.csv``: one row per recorded evaluation step of every eval.h5 group: group, step
  (0-based, burn-in left out), energy (Ha), variance (Ha²), pmove, nonfinite (walkers left
  out), seed, checkpoint_step; then, when a group sampled them, the walker means s2 (⟨S²⟩)
  and dipole_x, dipole_y, dipole_z (e·bohr, about the centre of nuclear charge), empty in
  groups without them (forces and densities stay in eval.h5: n_atoms × 3 × 4 estimators and
  histograms per step);
* ``pretrain.csv``: step, loss, when train.h5 has /pretrain.

`pandas.read_csv(RUN / "train.csv")` opens them; a missing value is an empty field. Floats are
written with Python's repr (shortest round-trip form): `float_precision="round_trip"` reads
them back bit for bit (pandas' default parser may differ in the last bit).
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from vmc.analysis import RunData

TRAIN_COLUMNS = ("step", "energy", "variance", "median", "clip_fraction", "pmove", "width",
                 "lr", "update_norm", "constraint_scale", "iterations", "residual", "rejected",
                 "bad_walkers", "step_time", "damping", "fallbacks", "cosine_uncentred",
                 "cosine_centred", "cosine_applied")
EVAL_COLUMNS = ("group", "step", "energy", "variance", "pmove", "nonfinite", "seed",
                "checkpoint_step")


def _cell(v):
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return "" if v is None else v


def _write(path: pathlib.Path, header, rows) -> pathlib.Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([_cell(v) for v in row])
    return path


def export_csv(run: RunData, out_dir=None) -> list[pathlib.Path]:
    """Write train.csv, eval.csv (and pretrain.csv) of a loaded run; returns the paths.

    Args:
      run: `vmc.analysis.load_run` result.
      out_dir: folder for the files (default: the run directory).

    Returns:
      the files written (a table without rows is not written).
    """
    out = pathlib.Path(out_dir or run.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if run.stats:
        cols = [c for c in TRAIN_COLUMNS if c in run.stats]
        cols += sorted(set(run.stats) - set(cols))
        n = run.stats["step"].size
        rows = ([run.stats[c][i] for c in cols] for i in range(n))
        written.append(_write(out / "train.csv", cols, rows))
    if run.evals:
        has = {k for ev in run.evals for k in (getattr(ev, "observables", None) or {})}
        extra = (["s2"] if "s2" in has else []) + (
            ["dipole_x", "dipole_y", "dipole_z"] if "dipole" in has else [])

        def observables(ev, i):
            obs = getattr(ev, "observables", None) or {}
            row = []
            if "s2" in extra:
                row.append(obs["s2"][i] if "s2" in obs else None)
            if "dipole_x" in extra:
                row += list(obs["dipole"][i]) if "dipole" in obs else [None] * 3
            return row

        def eval_rows():
            for ev in run.evals:
                n = ev.energy.size
                get = lambda a, i: None if a is None else a[i]
                for i in range(n):
                    yield (ev.name, i, ev.energy[i], get(ev.variance, i), get(ev.pmove, i),
                           get(ev.nonfinite, i), ev.attrs.get("seed"),
                           ev.attrs.get("checkpoint_step"), *observables(ev, i))
        written.append(_write(out / "eval.csv", EVAL_COLUMNS + tuple(extra), eval_rows()))
    if run.pretrain and "loss" in run.pretrain:
        p = run.pretrain
        steps = p.get("step", np.arange(p["loss"].size))
        written.append(_write(out / "pretrain.csv", ("step", "loss"),
                              zip(steps, p["loss"])))
    return written
