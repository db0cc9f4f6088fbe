"""summary.json: the newest evaluation, the training tail, their warnings, provenance.

Written by process 0 at the end of `vmc run`, `vmc resume` and `vmc eval`. Keys are those of
`vmc analyze --json` (`vmc.analysis.JSON_KEYS`): energy_ha, energy_stderr_ha (reblocked 1σ),
reference_ha, deviation_mha (1000 (E − E_ref), with deviation_label 'error' for an exact
reference), train_energy_ha, ..., flags (`vmc.diagnostics`).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Callable

import jax
import numpy as np

import vmc
from vmc import analysis, h5io, parallel
from vmc.diagnostics import energy_flags, training_flags
from vmc.stages import count as _count

EXACT_KINDS = analysis.EXACT_KINDS


def provenance() -> dict:
    """Versions and device of this process (package, git commit, jax, flax, folx)."""
    import flax
    import folx
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=pathlib.Path(vmc.__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"vmc_version": vmc.__version__, "git_commit": commit, "jax_version": jax.__version__,
            "flax_version": flax.__version__, "folx_version": getattr(folx, "__version__", None),
            "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count()}


def nonfinite_entry(result, max_fraction: float) -> dict:
    """The non-finite local energies of one evaluation, for summary.json.

    Returns {nonfinite_samples, nonfinite_fraction, reliable, reliability_note}: `reliable`
    is False when the fraction of non-finite E_L exceeds `max_fraction`
    (`eval.max_nonfinite_fraction`), since leaving out that many samples may bias the mean.
    """
    total = int(result.walkers.shape[0]) * len(result.energy)
    bad = int(np.sum(result.nonfinite)) if len(result.nonfinite) else 0
    frac = bad / total if total else 0.0
    reliable = frac <= max_fraction
    note = None if reliable else (
        f"{bad} of {total} local energies ({frac:.2g}) were not finite, above "
        f"eval.max_nonfinite_fraction={max_fraction:g}: the estimate may be biased")
    return {"nonfinite_samples": bad, "nonfinite_fraction": frac, "reliable": reliable,
            "reliability_note": note}


def write_summary(setup, run_dir: pathlib.Path, params, evaluation, *, wall_s: float,
                  log: Callable = print) -> dict:
    """Write summary.json from the newest evaluation and the training tail; returns it.

    evaluation: (group, EvalResult, seed) from `vmc.run.run_evaluation`, or None when this call
    evaluated nothing (eval.steps = 0): the energy fields are then null and the list of
    earlier evaluations is kept. Logs the final line: energy ± error (a lower bound, '>=',
    without a reblocking plateau), the deviation from the reference, the run directory, then
    one 'warning:' line per flag (`vmc.diagnostics.energy_flags`).
    """
    if not parallel.is_writer():
        return {}
    cfg = setup.cfg
    old = {}
    if (run_dir / "summary.json").exists():
        old = json.loads((run_dir / "summary.json").read_text())
    stats = h5io.read_stats(run_dir / "train.h5")
    tail, _ = analysis.train_tail(stats)
    ref = cfg.molecule.reference
    entry, variance, flags = {}, None, []
    if evaluation is not None:
        group, result, seed = evaluation
        series = result.energy[np.isfinite(result.energy)]   # steps with no finite E_L out
        rb = analysis.reblock(series) if len(series) >= 16 else None
        energy = rb.mean if rb else float(np.mean(series)) if len(series) else None
        entry = {"group": group, "seed": seed, "energy_ha": energy,
                 "energy_stderr_ha": rb.stderr if rb else None,
                 "steps": len(result.energy), "walkers": int(result.walkers.shape[0]),
                 "block_size": rb.block_size if rb else None, "tau": rb.tau if rb else None,
                 "plateau": rb.plateau if rb else None,
                 **nonfinite_entry(result, cfg.eval.max_nonfinite_fraction)}
        if getattr(result, "observables", None):
            from vmc.obs_report import format_lines, summarize_observables
            attrs = {"walkers": int(result.walkers.shape[0]),
                     "density_rmax": cfg.eval.density_rmax,
                     "density_centre": list(cfg.eval.density_centre)}
            entry["observables"] = summarize_observables(result.observables, attrs)
            for line in format_lines(entry["observables"], len(result.energy), run_dir):
                log(line)
        finite_var = result.variance[np.isfinite(result.variance)]
        variance = float(np.mean(finite_var)) if len(finite_var) else None
        flags = (energy_flags(series, rb, analysis.train_tail_series(stats)[0],
                              eval_steps=len(result.energy), run_dir=str(run_dir))
                 if rb else [])
    flags = list(flags) + training_flags(stats, str(run_dir))
    energy = entry.get("energy_ha")
    from vmc.config import hamiltonian_label, reference_mismatch
    mismatch = reference_mismatch(cfg)
    deviation = (None if energy is None or ref.energy is None or mismatch
                 else 1000.0 * (energy - ref.energy))
    label = None if deviation is None else analysis.deviation_label(ref.kind)
    summary = {
        "system": cfg.name,
        "run_dir": str(run_dir),
        "hamiltonian": hamiltonian_label(cfg.hamiltonian.ecp,
                                         [a.get("symbol") for a in cfg.molecule.atoms]),
        "energy_ha": energy,
        "energy_stderr_ha": entry.get("energy_stderr_ha"),
        "reference_ha": ref.energy,
        "reference_kind": ref.kind if ref.energy is not None else None,
        "reference_source": ref.source or None,
        "reference_hamiltonian": ref.hamiltonian if ref.energy is not None else None,
        "reference_note": mismatch,
        "deviation_mha": deviation,
        "deviation_label": label,
        "group": entry.get("group"),
        "block_size": entry.get("block_size"), "tau": entry.get("tau"),
        "plateau": entry.get("plateau"),
        "variance_ha2": variance,
        "flags": [f.to_dict() for f in flags],
        "nonfinite_samples": entry.get("nonfinite_samples"),
        "nonfinite_fraction": entry.get("nonfinite_fraction"),
        "reliable": entry.get("reliable"),
        "reliability_note": entry.get("reliability_note"),
        "observables": entry.get("observables"),
        "train_energy_ha": tail.mean if tail else None,
        "train_energy_stderr_ha": tail.stderr if tail else None,
        "train_steps": cfg.optim.steps, "eval_steps": entry.get("steps", 0),
        "walkers": cfg.sampler.walkers, "n_params": _count(params),
        "n_up": setup.molecule.n_up, "n_down": setup.molecule.n_down,
        "ansatz": cfg.ansatz.name, "solver": cfg.optim.solver,
        "dtype": "float64" if cfg.run.x64 else "float32", "seed": cfg.run.seed,
        "wall_s": wall_s,
        **provenance(),
        "evaluations": old.get("evaluations", []) + ([entry] if entry else []),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if energy is not None:
        log(final_line(summary))
    if mismatch:
        log(f"note: {mismatch}")
    for flag in flags:
        log(f"warning: {flag.line()}")
    if entry.get("reliable") is False:
        log(f"warning: estimate marked unreliable: {entry['reliability_note']}")
    return summary


def final_line(summary: dict) -> str:
    """'energy -1.174453 Ha ± 0.027 mHa, error +0.022 mHa (reference -1.1744757142); 2
    warnings; results in runs/H2 (wall 94 s)' from a summary.json dict. Without a reblocking
    plateau the error bar is printed as '± >=0.027 mHa' (a lower bound)."""
    se = summary.get("energy_stderr_ha")
    low = ">=" if summary.get("plateau") is False else ""
    bar = "" if se is None else f" ± {low}{1e3 * se:.3f} mHa"
    dev = summary.get("deviation_mha")
    word = "error" if summary.get("deviation_label") == "error" else "difference"
    err = "" if dev is None else f", {word} {dev:+.3f} mHa (reference {summary['reference_ha']})"
    n = len(summary.get("flags") or [])
    warn = "" if not n else f"; {n} warning{'s' if n > 1 else ''} below"
    return (f"energy {summary['energy_ha']:.6f} Ha{bar}{err}{warn}; results in "
            f"{summary['run_dir']} (wall {summary['wall_s']:.0f} s)")
