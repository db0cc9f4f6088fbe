"""`vmc analyze RUN_DIR [RUN_DIR ...]`: tables, JSON/CSV, and plots of finished runs.

For each run: reblocked energy (Ha) with its error bar, autocorrelation time, variance of
the local energy (Ha²), comparison with the reference energy of config.yaml (mHa), and the
PNGs training.png, variance.png, sampler.png in the run directory. Runs of one molecule that
differ in a geometry parameter (e.g. the bond length of a diatomic, bohr) also give an energy
curve. Tables go to stdout; notes and the paths written go to stderr, so that `--json` and
`--csv` output stays machine-readable. Errors print one line ``error: ...`` and return 2.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import pathlib
import re
import sys
from typing import NamedTuple, Optional, Sequence

import numpy as np
import yaml

from vmc.analysis import EXACT_KINDS, RunData, RunSummary, load_run, summarize
from vmc.system import ANGSTROM_TO_BOHR

AUTO_CURVE_PARAMS = ("bond_length", "r_min")
_LABELS = {"bond_length": "bond length (bohr)",
           "r_min": "shortest internuclear distance (bohr)"}


def geometry_parameters(config: dict) -> dict[str, float]:
    """Geometry parameters of the molecule in a resolved config, in bohr.

    Returns ``r_min`` (shortest internuclear distance), ``r_I_J`` for every atom pair I < J
    (0-based, in config order) and, for two atoms, ``bond_length``; an empty dict for one atom
    or an atoms list that cannot be read (units 'bohr' or 'angstrom', 1 Å = 1.8897261246 bohr).
    """
    mol = config.get("molecule") or {}
    scale = {"bohr": 1.0, "angstrom": ANGSTROM_TO_BOHR}.get(mol.get("units", "bohr"))
    try:
        pos = np.asarray([a["position"] for a in mol.get("atoms") or []], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return {}
    if scale is None or pos.ndim != 2 or pos.shape[0] < 2 or pos.shape[1] != 3:
        return {}
    pos = pos * scale
    out = {f"r_{i}_{j}": float(np.linalg.norm(pos[i] - pos[j]))
           for i, j in itertools.combinations(range(len(pos)), 2)}
    out["r_min"] = min(out.values())
    if len(pos) == 2:
        out["bond_length"] = out["r_0_1"]
    return out


def curve_parameter(config: dict, name: str) -> tuple[Optional[float], str]:
    """Value and axis label of parameter `name` for one run's config.

    `name` is a geometry parameter (see `geometry_parameters`, bohr) or a dotted path to a
    number in config.yaml, e.g. ``molecule.atoms.1.position.2`` (list items by index; label
    then gives the molecule's units for paths under ``molecule.atoms``, else no unit).

    Returns:
      (value or None when absent / not a number, axis label).
    """
    geo = geometry_parameters(config)
    if name in geo or re.fullmatch(r"bond_length|r_min|r_\d+_\d+", name):
        label = _LABELS.get(name) or "distance between atoms {} and {} (bohr)".format(
            *name.split("_")[1:])
        return geo.get(name), label
    node = config
    for key in name.split("."):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None, name
    unit = (config.get("molecule") or {}).get("units", "bohr")
    label = f"{name} ({unit})" if name.startswith("molecule.atoms") else name
    ok = isinstance(node, (int, float)) and not isinstance(node, bool)
    return (float(node) if ok else None), label


def _same_molecule(runs: Sequence[RunData]) -> bool:
    def key(run):
        mol = run.config.get("molecule") or {}
        return ([a.get("symbol") for a in mol.get("atoms") or [] if isinstance(a, dict)],
                mol.get("charge", 0), mol.get("spin", 0))
    return all(key(r) == key(runs[0]) for r in runs)


class Curve(NamedTuple):
    """Parameter of an energy curve: its name, (n_runs,) values and axis label with unit."""

    param: str
    values: list
    label: str


def pick_curve(runs: Sequence[RunData], name: Optional[str]) -> Optional[Curve]:
    """Choose the curve parameter: `name` if given, else the first of AUTO_CURVE_PARAMS that
    varies across runs of one molecule.

    Returns:
      Curve, or None when no curve applies.

    Raises:
      ValueError: `name` given but missing from some run's config.
    """
    if name is not None:
        vals = [curve_parameter(r.config, name) for r in runs]
        missing = [str(r.run_dir) for r, (v, _) in zip(runs, vals) if v is None]
        if missing:
            raise ValueError(f"--curve-param {name}: no numeric value in {', '.join(missing)}; "
                             f"valid: bond_length, r_min, r_I_J (atoms I, J of the molecule) "
                             f"or a dotted path into config.yaml such as "
                             f"molecule.atoms.1.position.2")
        return Curve(name, [v for v, _ in vals], vals[0][1])
    if len(runs) < 2 or not _same_molecule(runs):
        return None
    for cand in AUTO_CURVE_PARAMS:
        vals = [curve_parameter(r.config, cand) for r in runs]
        xs = [v for v, _ in vals]
        if None not in xs and len({round(x, 9) for x in xs}) > 1:
            return Curve(cand, xs, vals[0][1])
    return None


def format_value_error(value: Optional[float], err: Optional[float]) -> str:
    """'-1.17438(12)': value with its error in parentheses on the last two digits."""
    if value is None:
        return "—"
    if not err or not math.isfinite(err):
        return f"{value:.6f}"
    digits = max(0, 1 - int(math.floor(math.log10(err))))
    return f"{value:.{digits}f}({round(err * 10**digits):d})"


def _row(s: RunSummary) -> list[str]:
    dev = "—" if s.deviation_mha is None else f"{s.deviation_mha:+.2f}"
    low = ">=" if s.plateau is False else ""   # no plateau: the error bar is a lower bound
    if s.deviation_mha is not None and s.stderr:
        dev += f" ± {low}{1e3 * s.stderr:.2f}"
    energy = format_value_error(s.energy, s.stderr)
    if low and "(" in energy:
        energy = energy.replace("(", "(>=")
    flagged = "" if not s.flags else " !"
    return [pathlib.Path(s.run_dir).name, s.name, energy + flagged,
            "—" if s.tau is None else f"{s.tau:.1f}",
            "—" if s.block_size is None else str(s.block_size),
            "—" if s.variance is None else f"{s.variance:.3g}",
            "—" if s.reference is None else f"{s.reference:.6f}",
            dev, s.deviation_label or "—",
            "—" if s.correlation_pct is None else f"{s.correlation_pct:.2f}"]


_HEAD = ["run", "system", "energy (Ha)", "tau", "block", "var E_L (Ha²)", "reference (Ha)",
         "E - ref (mHa)", "comparison", "corr. energy %"]


def _nonfinite_limit(s: RunSummary) -> float:
    """eval.max_nonfinite_fraction of the run's config (default 1e-4)."""
    try:
        cfg = yaml.safe_load((pathlib.Path(s.run_dir) / "config.yaml").read_text()) or {}
        return float((cfg.get("eval") or {}).get("max_nonfinite_fraction", 1e-4))
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return 1e-4


def _notes(s: RunSummary) -> list[str]:
    out = []
    if s.estimator == "train tail":
        out.append("no eval.h5: energy is the mean of the last 10 % of training steps "
                   "(parameters still moving)")
    if s.estimator is None:
        out.append("no evaluation and fewer than 16 finite training energies: no energy"
                   if s.train_steps else "no evaluation and no training steps: no energy "
                   "(`vmc eval` evaluates the checkpoint)")
    for skipped in s.skipped:
        out.append(f"eval.h5 group left out: {skipped}")
    if s.skipped and s.group:
        out.append(f"the estimate is from {s.group}, the newest usable evaluation")
    for flag in s.flags:
        out.append(f"WARNING ({flag.code}): {flag.line()}")
    if s.evals and s.estimator == "eval" and s.evals[-1].nonfinite_samples:
        last = s.evals[-1]
        out.append(f"{last.nonfinite_samples} non-finite local energies left out of "
                   f"{last.name} (fraction {last.nonfinite_fraction:.2g})"
                   + (f": above {limit:g}, the estimate is UNRELIABLE"
                      if last.nonfinite_fraction > (limit := _nonfinite_limit(s)) else ""))
    if s.evals and s.estimator == "eval" and s.evals[-1].observables:
        from vmc.obs_report import format_lines
        last = s.evals[-1]
        out.extend(f"{last.name}: {line}" for line in
                   format_lines(last.observables, getattr(last, "steps", 0), s.run_dir))
    if s.reference_note:
        out.append(s.reference_note)
    if s.within_chemical_accuracy is not None:
        out.append("within chemical accuracy (1.6 mHa)" if s.within_chemical_accuracy
                   else "outside chemical accuracy (1.6 mHa)")
    if (s.reference_kind in EXACT_KINDS and s.deviation_sigma is not None
            and s.deviation_sigma < -3):
        out.append(f"energy lies {-s.deviation_sigma:.1f} sigma BELOW the {s.reference_kind} "
                   "reference: check the Hamiltonian, units and sampling")
    return out


def print_table(summaries: Sequence[RunSummary], file=None) -> None:
    """Print an aligned text table of the summaries, then per-run notes (default: stdout)."""
    file = sys.stdout if file is None else file
    rows = [_HEAD] + [_row(s) for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=file)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=file)
    for s in summaries:
        for note in _notes(s):
            print(f"{s.run_dir}: {note}", file=file)


PNGS = ("training.png", "variance.png", "sampler.png", "evaluation.png", "pretrain.png")


def _write_plots(run: RunData, summary: RunSummary, folder: pathlib.Path) -> None:
    """Write the PNGs of one run into `folder` (notes on stderr for those not written)."""
    from vmc import plots, plots_eval

    makers = {"training.png": lambda: plots.plot_training(run, summary),
              "variance.png": lambda: plots.plot_variance(run),
              "sampler.png": lambda: plots.plot_sampler(run),
              "evaluation.png": lambda: plots_eval.plot_evaluation(run, summary),
              "pretrain.png": lambda: plots_eval.plot_pretrain(run)}
    if not run.stats:   # e.g. the hf ansatz: nothing trained, train.h5 absent or empty
        print(f"note: {run.run_dir}: no training steps; training.png, variance.png and "
              f"sampler.png not written", file=sys.stderr)
        for k in ("training.png", "variance.png", "sampler.png"):
            makers.pop(k)
    if not run.pretrain:
        makers.pop("pretrain.png")   # no pretraining: nothing to say
    folder.mkdir(parents=True, exist_ok=True)
    for fname, make in makers.items():
        try:
            fig = make()
        except ValueError as e:
            print(f"note: {fname} not written: {e}", file=sys.stderr)
            continue
        fig.savefig(folder / fname, dpi=120)
        print(f"wrote {folder / fname}", file=sys.stderr)
    ev = summary.evals[-1] if summary.evals else None
    if ev is not None and getattr(ev, "observables", None) and "density" in ev.observables:
        fig = plots.plot_density(ev.observables["density"], f"{run.name} ({ev.name})")
        fig.savefig(folder / "density.png", dpi=120)
        print(f"wrote {folder / 'density.png'}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    from vmc.errors import OneLineParser
    p = OneLineParser(prog="vmc analyze", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    fmt.add_argument("--csv", action="store_true", help="print CSV, one row per run")
    p.add_argument("--no-plots", action="store_true", help="write no PNG files")
    p.add_argument("--plots-dir", metavar="DIR", help="write the PNGs of each run to "
                   "DIR/<run name>/ (default: into the run directory)")
    p.add_argument("--export", choices=("csv",), help="write train.csv (one row per step), "
                   "eval.csv and pretrain.csv into each run directory, for pandas.read_csv")
    p.add_argument("--curve-param", metavar="NAME", help="x of the energy curve: bond_length, "
                   "r_min, r_I_J (bohr) or a dotted config path; default: automatic")
    p.add_argument("--curve-out", metavar="PATH", help="curve PNG path (default: "
                   "./curve_<NAME>.png in the current directory)")
    return p


def _run(args) -> int:
    runs, summaries, failed = [], [], 0
    for d in args.run_dirs:
        try:
            run = load_run(d)
            summaries.append(summarize(run))
            runs.append(run)
        except (ValueError, OSError, KeyError) as e:
            if len(args.run_dirs) == 1:
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = "" if msg.startswith(f"{d}:") else f"{d}: "   # not the run's name twice
            print(f"error: {where}{msg}", file=sys.stderr)
            failed += 1
    if not runs:
        return 2
    curve = pick_curve(runs, args.curve_param)
    if args.json:
        objs = [s.to_dict() | {"geometry_bohr": geometry_parameters(r.config)}
                for r, s in zip(runs, summaries)]
        print(json.dumps(objs, indent=2))
    elif args.csv:
        rows = [s.to_dict() for s in summaries]
        fields = [k for k in rows[0] if k not in ("evaluations", "flags", "skipped")]
        w = csv.DictWriter(sys.stdout, fieldnames=fields + ["n_evals", "flags"],
                           lineterminator="\n")
        w.writeheader()
        for s, row in zip(summaries, rows):
            w.writerow({k: row[k] for k in fields} | {
                "n_evals": len(s.evals), "flags": " ".join(f.code for f in s.flags)})
    else:
        print_table(summaries)
    if args.export == "csv":
        from vmc.export import export_csv
        for r in runs:
            for path in export_csv(r):
                print(f"wrote {path}", file=sys.stderr)
    if not args.no_plots:
        for r, s in zip(runs, summaries):
            folder = (pathlib.Path(args.plots_dir) / pathlib.Path(r.run_dir).resolve().name
                      if args.plots_dir else pathlib.Path(r.run_dir))
            _write_plots(r, s, folder)
        if curve is not None:
            from vmc import plots

            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", curve.param)
            out = pathlib.Path(args.curve_out or f"curve_{safe}.png")
            plots.plot_curve(summaries, curve.values, curve.label).savefig(out, dpi=120)
            print(f"wrote {out}", file=sys.stderr)
    return 2 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `vmc analyze`.

    Args:
      argv: arguments after 'analyze', e.g. ['runs/LiH', '--json']; None reads sys.argv[1:].

    Returns:
      0 on success, 2 on a bad run directory, bad arguments or unreadable files (after one
      line ``error: ...`` on stderr per bad run; the good runs of the call are still shown).
    """
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    if args.no_plots and args.curve_out:
        print("error: --curve-out: not with --no-plots, which writes no PNG; valid: one of "
              "the two", file=sys.stderr)
        return 2
    if args.plots_dir and not args.no_plots:   # before any table is printed or file written
        from vmc.precheck import check_writable
        try:
            pathlib.Path(args.plots_dir).mkdir(parents=True, exist_ok=True)
            check_writable(pathlib.Path(args.plots_dir), "--plots-dir")
        except OSError as e:
            print(f"error: --plots-dir {args.plots_dir!r}: cannot create it ({e.strerror}); "
                  f"valid: a folder you can write, or --no-plots", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"error: {e}, or --no-plots", file=sys.stderr)
            return 2
    try:
        return _run(args)
    except (ValueError, OSError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        name = str(getattr(e, "filename", "") or "")
        if isinstance(e, OSError) and name.endswith((".png", ".csv")):
            msg = (f"cannot write {name}: {e.strerror or msg}; valid: a folder you can write "
                   f"(--plots-dir DIR, --curve-out PATH) or --no-plots")
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
