"""`vmc run` and `vmc eval`: run directories, training, evaluation and summary.json.

Exit codes (also in README): 0 finished; 2 bad input (nothing written); 3 diverged (too many
consecutive non-finite steps even after one rollback); 75 stopped by a signal or
run.max_minutes after writing a checkpoint (requeue and `--resume`); 1 any other error.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
from typing import Callable, Optional

import jax
import numpy as np

import vmc
from vmc import analysis, checkpoint as ckpt, h5io, parallel
from vmc.config import Config, dump_yaml
from vmc.errors import InputError
from vmc.evaluate import evaluate, resize_walkers
from vmc.loop import Outcome, SignalFlag
from vmc.precheck import (RESUMABLE, DirectoryGuard, check_resume_config, check_run_dir,  # noqa: F401
                          check_run_input, holds_run, trains)
from vmc.sampler import MCMCState
from vmc.stages import count as _count, progress_bar as _progress, restore as _restore
from vmc.stages import run_keys, train, without_training
from vmc.train import Setup, build, init_state

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 75
EXACT_KINDS = ("exact", "estimated exact")


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


class Interrupted(Exception):
    """A signal arrived outside the training loop (pretraining, burn-in or evaluation)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _RaiseOnSignal(SignalFlag):
    """Turn SIGTERM/SIGINT/SIGUSR1 into `Interrupted` (the training loop installs its own
    handlers, which finish the step and checkpoint, and restores these afterwards).

    A signal that lands while Python runs a gc callback or a finalizer (JAX's
    `_xla_gc_callback`, say) raises there, where Python reports the exception as
    "ignored" and carries on; the unraisable hook then delivers the signal again, so that
    it raises in the interrupted code itself."""

    def __enter__(self):
        import sys
        self._old_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return super().__enter__()

    def __exit__(self, *exc):
        import sys
        sys.unraisablehook = self._old_hook
        return super().__exit__(*exc)

    def _unraisable(self, info):
        if isinstance(info.exc_value, Interrupted):   # from another thread: not in here
            import os
            import threading
            threading.Timer(0.01, os.kill, (os.getpid(), info.exc_value.signum)).start()
            return
        self._old_hook(info)

    def _handle(self, signum, frame):
        raise Interrupted(signum)


def _interrupted_message(err: Interrupted, phase: str, again: str = "`--resume`") -> str:
    import signal
    name = signal.Signals(err.signum).name
    if phase == "evaluation":
        return (f"stopped by {name} during evaluation; the final checkpoint is written: "
                f"{again} evaluates again")
    return (f"stopped by {name} during {phase}, before the first checkpoint; {again} "
            f"starts the run again")


def train_run(cfg: Config, run_dir: pathlib.Path, *, resume: bool = False,
              init_from: Optional[pathlib.Path] = None, log: Callable = print) -> int:
    """Train (or resume), evaluate and write summary.json. Returns the exit code.

    Every input check runs before the run directory is touched (vmc.precheck); should bad
    input still surface later, the directory is left as it was found. The 'hf' ansatz has
    nothing to train: burn-in, a checkpoint at step 0, then the evaluation.

    Raises:
      InputError: the run directory already holds a run (without `resume`), or bad input.
    """
    wall_start = time.time()
    run_dir = pathlib.Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    if resume:
        if ckpt.list_checkpoints(run_dir / "checkpoints"):
            check_resume_config(cfg, run_dir)
        else:
            log(f"resume: no checkpoint yet in {run_dir} (stopped before the first one); "
                f"starting from the beginning")
            resume = False
            if parallel.is_writer():   # (before the barrier below: before any write)
                (run_dir / "train.h5").unlink(missing_ok=True)  # that attempt's rows
    checked = check_run_input(cfg, resume=resume, init_from=init_from, log=log)
    parallel.barrier("vmc-input-checked")   # every process checked before process 0 writes
    with _RaiseOnSignal(), DirectoryGuard(run_dir):
        phase = ["setup"]
        try:
            return _train_run(cfg, run_dir, resume, init_from, log, wall_start, phase,
                              checked)
        except Interrupted as err:
            log(_interrupted_message(err, phase[0]))
            return EXIT_INTERRUPTED


def _train_run(cfg, run_dir, resume, init_from, log, wall_start, phase, checked) -> int:
    setup = build(cfg, hf=checked.hf)
    keys = run_keys(cfg.run.seed)
    if resume:
        state, start, rejected = _restore(setup, run_dir, log)
        if start > cfg.optim.steps:
            raise InputError(f"optim.steps: {cfg.optim.steps} is below the checkpoint's step "
                             f"{start}; valid: >= {start}")
    else:
        state, start, rejected = init_state(setup, keys["init"]), 0, 0
        if init_from is not None:
            from vmc.warmstart import warm_start
            state = warm_start(setup, state, pathlib.Path(init_from), log)
    if parallel.is_writer():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"--out {str(run_dir)!r}: cannot create it ({err.strerror})") from None
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    if not trains(cfg):
        state, done = without_training(setup, state, run_dir, resume, keys, log, phase)
    else:
        state, done, outcome = train(setup, state, start, rejected, run_dir, resume, init_from,
                                     keys, log, phase, note=checked.note)
        if outcome is not Outcome.FINISHED:
            return EXIT_INTERRUPTED if outcome is Outcome.INTERRUPTED else EXIT_DIVERGED
    phase[0] = "evaluation"
    result = None
    if cfg.eval.steps > 0:
        result = run_evaluation(setup, state.params, state.mcmc, run_dir, steps=cfg.eval.steps,
                                walkers=cfg.eval.walkers, seed=cfg.eval.seed,
                                burn_in=cfg.eval.burn_in, checkpoint_step=done, log=log)
    else:
        log("evaluation skipped (eval.steps=0); `vmc eval` evaluates the final checkpoint")
    write_summary(setup, run_dir, state.params, result, wall_s=time.time() - wall_start,
                  seed=cfg.eval.seed, log=log)
    return EXIT_OK


def run_evaluation(setup: Setup, params, mcmc: MCMCState, run_dir: pathlib.Path, *, steps: int,
                   walkers: int, seed: int, burn_in: int, checkpoint_step: int,
                   log: Callable = print, observables=None):
    """Frozen-parameter evaluation into a new eval.h5 group; returns (group, EvalResult).

    observables: names to sample beside the energy (default `eval.observables`); their
    per-step columns go into the same group (vmc.obs_report.COLUMNS)."""
    ev = setup.cfg.eval
    names = tuple(ev.observables if observables is None else observables)
    start_walkers = resize_walkers(parallel.to_host(mcmc.walkers), walkers)
    bar = _progress(setup.cfg, steps + burn_in, "eval")
    result = evaluate(setup, params, start_walkers, float(mcmc.width), steps=steps,
                      burn_in=burn_in, key=jax.random.PRNGKey(seed),
                      progress=(lambda i, n: bar.update(1)) if bar else None,
                      observables=names)
    obs_attrs = {}
    if names:
        obs_attrs = {"observables": ",".join(names), "s2_max_pairs": ev.s2_max_pairs}
        if "density" in names:
            obs_attrs.update(density_bins=ev.density_bins, density_rmax=ev.density_rmax,
                             density_centre=np.asarray(ev.density_centre or [], np.float64))
    if bar is not None:
        bar.close()
    group = h5io.next_group_name(run_dir / "eval.h5")
    if parallel.is_writer():
        h5io.write_group(run_dir / "eval.h5", group,
                         {"energy": result.energy, "variance": result.variance,
                          "pmove": result.pmove, "nonfinite": result.nonfinite,
                          **result.observables},
                         {"seed": seed, "walkers": walkers, "steps": steps, "burn_in": burn_in,
                          "checkpoint_step": checkpoint_step, "seconds": result.seconds,
                          **obs_attrs})
    log(f"evaluation {group}: {steps} steps x {walkers} walkers in {result.seconds:.1f} s"
        + (f" (with {', '.join(names)})" if names else ""))
    for name in names:
        key = f"{name}_nonfinite"
        bad = int(np.sum(result.observables.get(key, 0)))
        if bad:
            log(f"warning: evaluation {group}: {bad} of {steps * walkers} {name} samples were "
                f"not finite and were left out ({bad / (steps * walkers):.2g})")
    bad = int(np.sum(result.nonfinite))
    if bad:
        log(f"warning: evaluation {group}: {bad} of {steps * walkers} local energies were not "
            f"finite and were left out ({bad / (steps * walkers):.2g})")
    return group, result


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


def write_summary(setup: Setup, run_dir: pathlib.Path, params, evaluation, *, wall_s: float,
                  seed: int, log: Callable = print) -> dict:
    """Write summary.json from the newest evaluation and the training tail; returns it.

    evaluation: (group, EvalResult) from `run_evaluation`, or None when this call evaluated
    nothing (eval.steps = 0): the energy fields are then null and the list of earlier
    evaluations is kept.
    """
    if not parallel.is_writer():
        return {}
    cfg = setup.cfg
    old = {}
    if (run_dir / "summary.json").exists():
        old = json.loads((run_dir / "summary.json").read_text())
    tail, _ = analysis.train_tail(h5io.read_stats(run_dir / "train.h5"))
    ref = cfg.molecule.reference
    entry, variance = {}, None
    if evaluation is not None:
        group, result = evaluation
        series = result.energy[np.isfinite(result.energy)]   # steps with no finite E_L out
        rb = analysis.reblock(series) if len(series) >= 16 else None
        energy = rb.mean if rb else float(np.mean(series)) if len(series) else None
        entry = {"group": group, "seed": seed, "energy_ha": energy,
                 "energy_stderr_ha": rb.stderr if rb else None,
                 "steps": len(result.energy), "walkers": int(result.walkers.shape[0]),
                 "block_size": rb.block_size if rb else None, "tau": rb.tau if rb else None,
                 "plateau": rb.plateau if rb else None,
                 **nonfinite_entry(result, cfg.eval.max_nonfinite_fraction)}
        if result.observables:
            from vmc.obs_report import format_lines, summarize_observables
            attrs = {"walkers": int(result.walkers.shape[0]),
                     "density_rmax": cfg.eval.density_rmax,
                     "density_centre": list(cfg.eval.density_centre)}
            entry["observables"] = summarize_observables(result.observables, attrs)
            for line in format_lines(entry["observables"]):
                log(line)
        finite_var = result.variance[np.isfinite(result.variance)]
        variance = float(np.mean(finite_var)) if len(finite_var) else None
    energy = entry.get("energy_ha")
    deviation = (None if energy is None or ref.energy is None
                 else 1000.0 * (energy - ref.energy))
    summary = {
        "system": cfg.name,
        "energy_ha": energy,
        "energy_stderr_ha": entry.get("energy_stderr_ha"),
        "reference_ha": ref.energy,
        "reference_kind": ref.kind if ref.energy is not None else None,
        "reference_source": ref.source or None,
        "error_mha": deviation if ref.kind in EXACT_KINDS else None,
        "deviation_mha": deviation,
        "block_size": entry.get("block_size"), "tau": entry.get("tau"),
        "plateau": entry.get("plateau"),
        "variance_ha2": variance,
        "nonfinite_samples": entry.get("nonfinite_samples"),
        "nonfinite_fraction": entry.get("nonfinite_fraction"),
        "reliable": entry.get("reliable"),
        "reliability_note": entry.get("reliability_note"),
        "train_energy_ha": tail.mean if tail else None,
        "train_energy_stderr_ha": tail.stderr if tail else None,
        "train_steps": cfg.optim.steps, "eval_steps": entry.get("steps", 0),
        "walkers": cfg.sampler.walkers, "n_params": _count(params),
        "n_up": setup.molecule.n_up, "n_down": setup.molecule.n_down,
        "ansatz": cfg.ansatz.name, "solver": cfg.optim.solver,
        "dtype": "float64" if cfg.run.x64 else "float32", "seed": cfg.run.seed,
        "wall_s": wall_s,
        "observables": entry.get("observables"),
        **provenance(),
        "evaluations": old.get("evaluations", []) + ([entry] if entry else []),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    err = "" if deviation is None else f", {'error' if ref.kind in EXACT_KINDS else 'difference'} {deviation:+.3f} mHa"
    if energy is not None:
        refs = "" if ref.energy is None else f" (reference {ref.energy})"
        log(f"energy {energy:.6f} Ha ± {1000 * (entry.get('energy_stderr_ha') or float('nan')):.3f} mHa"
            f"{err}{refs}; wall {wall_s:.0f} s")
    if entry.get("reliable") is False:
        log(f"warning: estimate marked unreliable: {entry['reliability_note']}")
    return summary


def eval_run(run_dir: pathlib.Path, *, steps: Optional[int] = None,
             walkers: Optional[int] = None, seed: Optional[int] = None,
             burn_in: Optional[int] = None, log: Callable = print,
             observables: Optional[str] = None) -> int:
    """`vmc eval`: evaluate the newest valid checkpoint with a fresh seed; update summary.json.

    observables: comma-separated names (vmc.obs_report.OBSERVABLES) to sample beside the
    energy; None: the run's `eval.observables`.

    Raises:
      InputError: not a run directory, or no valid checkpoint.
    """
    from vmc.config import load_config
    wall_start = time.time()
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"run_dir {str(run_dir)!r}: no config.yaml; not a run directory")
    cfg = load_config(run_dir / "config.yaml")
    for name, v, lo in (("--steps", steps, 16), ("--walkers", walkers, 2),
                        ("--burn-in", burn_in, 0)):
        if v is not None and v < lo:
            raise InputError(f"{name}: {v} is not valid; valid: >= {lo}"
                             + (" (reblocking needs 16 samples)" if lo == 16 else ""))
    if cfg.eval.steps == 0 and steps is None:
        steps = 2000
    if observables is not None:
        import dataclasses
        from vmc.obs_report import parse_observables
        names = parse_observables(observables, "--observables")
        if "forces" in names:
            from vmc.obs_report import check_forces_supported
            check_forces_supported(cfg.molecule)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, observables=names))
    with _RaiseOnSignal():
        try:
            return _eval_run(cfg, run_dir, steps, walkers, seed, burn_in, log, wall_start)
        except Interrupted as err:
            log(_interrupted_message(err, "evaluation", again="`vmc eval`"))
            return EXIT_INTERRUPTED


def _eval_run(cfg, run_dir, steps, walkers, seed, burn_in, log, wall_start) -> int:
    setup = build(cfg)
    state, step, _ = _restore(setup, run_dir, log, what="vmc eval")
    old = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    used = {e.get("seed") for e in old.get("evaluations", [])} | {cfg.eval.seed}
    if seed is None:
        seed = max(s for s in used if s is not None) + 1
    result = run_evaluation(setup, state.params, state.mcmc, run_dir,
                            steps=cfg.eval.steps if steps is None else steps,
                            walkers=walkers or cfg.eval.walkers, seed=seed,
                            burn_in=cfg.eval.burn_in if burn_in is None else burn_in,
                            checkpoint_step=step, log=log)
    write_summary(setup, run_dir, state.params, result, wall_s=time.time() - wall_start,
                  seed=seed, log=log)
    return EXIT_OK
