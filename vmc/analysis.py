"""Statistics of a run: reblocked error bars and run summaries (the reference comparison is
`vmc.reference`).

Units: energies in hartree (Ha), variances in Ha², lengths in bohr.

Autocorrelation convention (MATH.md §4): τ = 1 + 2 Σ_k ρ_k, so that the variance of the mean
of n correlated samples is σ²_mean = τ σ² / n. Reblocking estimates σ_mean directly, and we
report τ = (σ_mean / σ_naive)² with σ_naive = σ / √n.

This module imports no training code and no matplotlib (plots live in `vmc.plots`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional

import h5py
import numpy as np
import yaml

from vmc import h5io
from vmc.errors import InputError

from vmc.reblock import (MIN_BLOCKS, MIN_SAMPLES, BlockingLevel,  # noqa: F401
                         ReblockResult, blocking_levels, reblock)
from vmc.reference import (CHEMICAL_ACCURACY_HA, EXACT_KINDS, Reference,  # noqa: F401
                           compare, parse_reference, deviation_label)


# ------------------------------------------------------------------------- run directories
TRAIN_TAIL_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class EvalData:
    """One frozen-parameter evaluation (a group of eval.h5).

    Attributes:
      name: group name, e.g. 'eval_000'.
      energy: (n_steps,) float64 per-step walker-mean local energy, Ha, burn-in removed.
      variance: (n_steps,) float64 per-step walker variance of E_L, Ha², or None.
      pmove: (n_steps,) float64 acceptance rate, or None.
      attrs: group attributes (seed, walkers, steps, burn_in, checkpoint_step) as Python scalars.
      nonfinite: (n_steps,) float64 walkers whose E_L was not finite and was left out, or
        None (files written before the count existed).
      observables: {column: (n_steps, ...) float64} of the observables sampled with the
        energy (vmc.obs_report.COLUMNS); empty when none was.
    """

    name: str
    energy: np.ndarray
    variance: Optional[np.ndarray]
    pmove: Optional[np.ndarray]
    attrs: dict
    nonfinite: Optional[np.ndarray] = None
    observables: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunData:
    """Everything `vmc analyze` reads from one run directory.

    Attributes:
      run_dir: the directory.
      name: system name (config `name`, else the directory name).
      config: config.yaml as a plain dict.
      stats: train.h5 /stats columns, each (n_steps,) (energy in Ha, variance Ha², width
        bohr, ...); empty when there is no train.h5 or no /stats in it yet.
      pretrain: train.h5 /pretrain columns (step, loss), or None.
      evals: eval.h5 groups in name order; empty when there is no eval.h5.
      reference: the reference energy, or None when the config gives none or gives one for
        another Hamiltonian, charge or spin.
      unreadable: one line per eval.h5 group that could not be read (no 'energy', ...).
      reference_note: why a reference the config gives is not compared with, or None.
    """

    run_dir: pathlib.Path
    name: str
    config: dict
    stats: dict
    pretrain: Optional[dict]
    evals: list
    reference: Optional[Reference]
    unreadable: tuple = ()
    reference_note: Optional[str] = None


def _read_group(group) -> dict:
    return {k: np.asarray(d[()]) for k, d in group.items() if isinstance(d, h5py.Dataset)}


def _load_eval(name: str, group) -> EvalData:
    data = _read_group(group)
    if "energy" not in data:
        raise InputError(f"eval.h5/{name}: no dataset 'energy'")
    attrs = {k: v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic)
             else v for k, v in group.attrs.items()}
    cut = int(attrs.get("burn_in", 0) or 0)
    n = data["energy"].shape[0]
    # Drop burn-in only if the file holds it (length steps + burn_in); else all are measured.
    if not (cut > 0 and n == int(attrs.get("steps", -1)) + cut):
        cut = 0
    get = lambda k: None if k not in data else np.asarray(data[k][cut:], dtype=np.float64)
    from vmc.obs_report import observable_columns
    obs = {k: get(k) for k in observable_columns(data)}
    return EvalData(name, get("energy"), get("variance"), get("pmove"), attrs, get("nonfinite"),
                    obs)


def _try_load_eval(name: str, group):
    """EvalData, or the one-line reason the group cannot be read."""
    try:
        return _load_eval(name, group)
    except (InputError, OSError, KeyError, TypeError) as e:
        return f"{name}: {e}"


def load_run(run_dir) -> RunData:
    """Read config.yaml, train.h5 and eval.h5 of a run directory (format: ARCHITECTURE.md).

    Args:
      run_dir: path to the run directory.

    Returns:
      RunData with arrays as float64 (step as int64).

    Raises:
      InputError (a ValueError): not a directory, no config.yaml, neither train.h5 nor eval.h5,
        stats columns of unequal length or without 'step'/'energy', a non-numeric reference
        energy. An eval group without 'energy' is listed in `unreadable`, not raised.
      OSError: an HDF5 file that cannot be read.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a run directory (does not exist or is a file)")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{run_dir}: no config.yaml; is this a run directory of `vmc run`?")
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{cfg_path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path}: expected a mapping at top level")
    train, evalf = run_dir / "train.h5", run_dir / "eval.h5"
    if not train.is_file() and not evalf.is_file():
        raise InputError(f"{run_dir}: neither train.h5 nor eval.h5 found")
    stats, pretrain, evals = {}, None, []
    if train.is_file():
        with h5io.open_read(train) as f:   # a live run's file; columns cut to equal length
            stats = h5io.read_columns(f["stats"]) if "stats" in f else {}
            pretrain = h5io.read_columns(f["pretrain"]) if "pretrain" in f else None
        missing = {"step", "energy"} - set(stats)
        if stats and missing:
            raise InputError(f"{train}: /stats lacks {sorted(missing)}")
        if stats and (len({v.shape for v in stats.values()}) != 1 or stats["step"].ndim != 1):
            raise InputError(f"{train}: /stats datasets must be 1-D of equal length")
    if evalf.is_file():
        with h5io.open_read(evalf) as f:
            loaded = [_try_load_eval(k, f[k]) for k in sorted(f) if isinstance(f[k], h5py.Group)]
        evals = [e for e in loaded if isinstance(e, EvalData)]
        unreadable = tuple(e for e in loaded if isinstance(e, str))
    else:
        unreadable = ()
    name = str(config.get("name") or run_dir.resolve().name)
    reference, reference_note = parse_reference(config)
    return RunData(run_dir, name, config, stats, pretrain, evals, reference, unreadable,
                   reference_note)


# ------------------------------------------------------------------------------ summaries
@dataclasses.dataclass(frozen=True)
class EvalSummary:
    """Reblocked result of one evaluation group; energies in Ha, variance in Ha²."""

    name: str
    checkpoint_step: Optional[int]
    seed: Optional[int]
    walkers: Optional[int]
    steps: int
    energy: float
    stderr: float
    tau: float
    block_size: int
    plateau: bool
    variance: Optional[float]
    pmove: Optional[float]
    nonfinite_samples: int = 0        # local energies left out as not finite
    nonfinite_fraction: float = 0.0   # of steps × walkers
    observables: Optional[dict] = None   # vmc.obs_report.summarize_observables, or None


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """The result of one run, recomputed from its HDF5 files (never from summary.json).

    Energies in Ha, variance in Ha², deviation in mHa. `estimator` says where `energy` comes
    from: 'eval' (the last group of eval.h5, frozen parameters) or 'train tail' (last 10 % of
    training steps, parameters still moving) when there is no evaluation; None when neither
    has MIN_SAMPLES finite values.
    `flags` are the warnings of `vmc.diagnostics.energy_flags` on that estimate. deviation_mha = 1000 (energy − reference); its label is
    'error' for an exact or estimated-exact reference and 'difference to CCSD(T)/CBS' (or
    'difference to reference') otherwise, where within_chemical_accuracy stays None.
    correlation_pct = 100 (E_HF − E)/(E_HF − E_ref) (fraction of correlation energy,
    shared/reference/README.md), None without hf_limit.
    """

    name: str
    run_dir: str
    estimator: Optional[str]
    energy: Optional[float]
    stderr: Optional[float]
    tau: Optional[float]
    block_size: Optional[int]
    plateau: Optional[bool]
    n_samples: int
    variance: Optional[float]
    train_steps: int
    train_tail_energy: Optional[float]
    train_tail_stderr: Optional[float]
    train_tail_plateau: Optional[bool]
    reference: Optional[float]
    reference_kind: Optional[str]
    reference_source: Optional[str]
    hf_limit: Optional[float]
    deviation_mha: Optional[float]
    deviation_sigma: Optional[float]
    deviation_label: Optional[str]
    within_chemical_accuracy: Optional[bool]
    correlation_pct: Optional[float]
    evals: tuple
    flags: tuple = ()     # vmc.diagnostics.Flag: no_plateau, eval_drift, train_eval_disagree
    skipped: tuple = ()   # one line per eval.h5 group left out (unreadable, too few values)
    group: Optional[str] = None   # the eval.h5 group the estimate comes from
    reference_note: Optional[str] = None   # why the config's reference is not compared with

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict with the key names of summary.json (JSON_KEYS):
        energy_ha, energy_stderr_ha, variance_ha2, reference_ha, train_energy_ha, ...;
        evaluations as a list of dicts (group, energy_ha, ...), flags as {code, message,
        advice}, skipped as lines."""
        d = dataclasses.asdict(self)
        d["evals"] = [{EVAL_KEYS.get(k, JSON_KEYS.get(k, k)): v
                       for k, v in dataclasses.asdict(e).items()} for e in self.evals]
        d["flags"] = [f.to_dict() for f in self.flags]
        d["skipped"] = list(self.skipped)
        return {JSON_KEYS.get(k, k): v for k, v in d.items()}


# RunSummary / EvalSummary field -> the key shared by summary.json, `analyze --json`, --csv
JSON_KEYS = {"name": "system", "energy": "energy_ha", "stderr": "energy_stderr_ha",
             "variance": "variance_ha2", "reference": "reference_ha", "hf_limit": "hf_limit_ha",
             "train_tail_energy": "train_energy_ha", "train_tail_stderr": "train_energy_stderr_ha",
             "train_tail_plateau": "train_plateau", "evals": "evaluations"}
EVAL_KEYS = {"name": "group"}   # an EvalSummary's name is its eval.h5 group (summary.json)


def _finite_mean(x) -> Optional[float]:
    if x is None or not np.any(np.isfinite(x)):
        return None
    return float(np.mean(x[np.isfinite(x)]))


def _summarize_eval(ev: EvalData) -> EvalSummary:
    energy = ev.energy[np.isfinite(ev.energy)]   # a step with no finite E_L is NaN
    if energy.size < MIN_SAMPLES:
        raise InputError(f"{ev.name}: {energy.size} finite step energies of {ev.energy.size}, "
                         f"fewer than the {MIN_SAMPLES} reblocking needs")
    r = reblock(energy)
    ints = [None if ev.attrs.get(k) is None else int(ev.attrs[k])
            for k in ("checkpoint_step", "seed", "walkers")]
    bad = 0 if ev.nonfinite is None else int(np.sum(ev.nonfinite))
    total = (ints[2] or 0) * int(ev.energy.size)
    obs = None
    if ev.observables:
        from vmc.obs_report import summarize_observables
        try:
            obs = summarize_observables(ev.observables, ev.attrs)
        except ValueError as e:
            raise InputError(f"eval.h5/{ev.name}: {e}") from None
    return EvalSummary(ev.name, *ints, int(ev.energy.size), r.mean, r.stderr, r.tau,
                       r.block_size, r.plateau, _finite_mean(ev.variance), _finite_mean(ev.pmove),
                       bad, bad / total if total else 0.0, obs)


def train_tail_series(stats: dict) -> tuple[np.ndarray, slice]:
    """The training energies (Ha) of the last 10 % of steps (at least MIN_SAMPLES steps),
    non-finite and rejected steps (those that raised the running 'rejected' count) left out.

    Returns:
      ((m,) energies, the slice of steps they come from).
    """
    energy = np.asarray(stats.get("energy", np.zeros(0)), dtype=np.float64)
    n = energy.size
    tail = slice(n - min(n, max(math.ceil(TRAIN_TAIL_FRACTION * n), MIN_SAMPLES)), n)
    keep = np.isfinite(energy)
    rejected = np.asarray(stats.get("rejected", np.zeros(n)), dtype=np.float64)
    if rejected.size == n and n:   # a running count: a step that raised it was rejected
        keep &= np.diff(rejected, prepend=0.0) <= 0
    return energy[tail][keep[tail]], tail


def train_tail(stats: dict) -> tuple[Optional[ReblockResult], slice]:
    """Reblock the training tail (`train_tail_series`; stats: train.h5 /stats columns, uses
    'energy' (n_steps,) Ha and 'rejected').

    Returns:
      (ReblockResult or None when fewer than MIN_SAMPLES finite energies remain, the slice of
      steps used).
    """
    e, tail = train_tail_series(stats)
    return (reblock(e) if e.size >= MIN_SAMPLES else None), tail


def summarize(run_dir) -> RunSummary:
    """Summarize a run directory: reblocked energy, error vs reference, per-eval results.

    Args:
      run_dir: path to a run directory, or a RunData already loaded.

    Returns:
      RunSummary (see its docstring for units and definitions).

    Raises:
      InputError (a ValueError), OSError: as `load_run`. An evaluation group with fewer
        than 16 finite step energies (or unreadable) is left out and named in `skipped`; the
        estimate is the newest usable group.
    """
    from vmc.diagnostics import energy_flags, training_flags
    run = run_dir if isinstance(run_dir, RunData) else load_run(run_dir)
    good, skipped = [], list(run.unreadable)
    for ev in run.evals:
        try:
            good.append((ev, _summarize_eval(ev)))
        except InputError as e:
            skipped.append(str(e))
    evals = tuple(s for _, s in good)
    tail, cut = train_tail(run.stats)
    head = dict.fromkeys(("estimator", "energy", "stderr", "tau", "block_size", "plateau",
                          "variance", "group"))
    n_s, flags = 0, []
    if evals:
        ev, last = good[-1]
        head.update(estimator="eval", energy=last.energy, stderr=last.stderr, tau=last.tau,
                    block_size=last.block_size, plateau=last.plateau, variance=last.variance,
                    group=last.name)
        n_s = last.steps
        series = ev.energy[np.isfinite(ev.energy)]
        flags = energy_flags(series, reblock(series), train_tail_series(run.stats)[0],
                             eval_steps=last.steps, run_dir=str(run.run_dir))
    elif tail is not None:
        head.update(estimator="train tail", energy=tail.mean, stderr=tail.stderr, tau=tail.tau,
                    block_size=tail.block_size, plateau=tail.plateau,
                    variance=_finite_mean(run.stats.get("variance", np.zeros(0))[cut]))
        n_s = cut.stop - cut.start
        flags = energy_flags(None, tail, None, run_dir=str(run.run_dir))
    flags = list(flags) + training_flags(run.stats, str(run.run_dir))
    ref = run.reference
    cmp = dict.fromkeys(("deviation_mha", "deviation_sigma", "deviation_label",
                         "within_chemical_accuracy", "correlation_pct"))
    if ref is not None and head["energy"] is not None:
        cmp = compare(head["energy"], head["stderr"], ref)
    return RunSummary(
        name=run.name, run_dir=str(run.run_dir), n_samples=int(n_s), **head,
        train_steps=int(run.stats["step"].size) if run.stats else 0,
        train_tail_energy=None if tail is None else tail.mean,
        train_tail_stderr=None if tail is None else tail.stderr,
        train_tail_plateau=None if tail is None else tail.plateau,
        reference=None if ref is None else ref.energy,
        reference_kind=None if ref is None else ref.kind,
        reference_source=None if ref is None else ref.source,
        hf_limit=None if ref is None else ref.hf_limit, **cmp, evals=evals,
        flags=tuple(flags), skipped=tuple(skipped), reference_note=run.reference_note)
