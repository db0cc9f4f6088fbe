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
from vmc import checkpoint as ckpt, h5io, parallel
from vmc.config import Config, dump_yaml
from vmc.errors import InputError
from vmc.evaluate import evaluate, resize_walkers
from vmc.loop import Outcome, SignalFlag
from vmc.precheck import (RESUMABLE, DirectoryGuard, check_resume_config, check_run_dir,  # noqa: F401
                          changed_settings, check_writable, shown_changes,
                          check_run_input, holds_run, trains)
from vmc.rundir_lock import RunDirLock, claim
from vmc.sampler import MCMCState
from vmc.stages import count as _count, progress_bar as _progress, restore as _restore
from vmc.stages import run_keys, train, without_training
from vmc.runlog import attach as attach_log
from vmc.summary import provenance, write_summary  # noqa: F401
from vmc.train import Setup, build, init_state

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 75
EXACT_KINDS = ("exact", "estimated exact")


class Interrupted(BaseException):
    """A signal arrived outside the training loop (pretraining, burn-in or evaluation).

    A BaseException, as KeyboardInterrupt is: library code that guards a step with a broad
    ``except Exception`` (JAX's persistent-cache read warns "Error reading persistent
    compilation cache entry ... Interrupted: 15" and compiles again) must not swallow it,
    or the signal is lost and the run carries on."""

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

    _in_hook = False

    def _unraisable(self, info):
        if isinstance(info.exc_value, Interrupted):   # from another thread: not in here
            import os
            import threading
            import time
            signum, done = info.exc_value.signum, threading.Event()

            def deliver():   # only once this hook has returned: raised in here, it is lost
                done.wait()
                time.sleep(0.01)
                os.kill(os.getpid(), signum)
            self._in_hook = True
            try:
                threading.Thread(target=deliver, daemon=True).start()
            finally:
                self._in_hook = False
                done.set()
            return
        self._old_hook(info)

    def _handle(self, signum, frame):
        if self._in_hook:   # another signal while the hook runs: its delivery is on the way
            return
        raise Interrupted(signum)


def _drain() -> None:
    """Wait for the computations still in flight (asynchronous dispatch): a process that
    exits while XLA still runs one can crash in its teardown."""
    import jax
    for a in jax.live_arrays():
        try:
            a.block_until_ready()
        except Exception:   # a deleted or donated buffer
            pass


def _interrupted_message(err: Interrupted, phase: str, again: str = "`--resume`",
                         resumed: bool = False, written: bool = True) -> str:
    import signal
    name = signal.Signals(err.signum).name
    if phase == "evaluation":
        return (f"stopped by {name} during evaluation; the final checkpoint is written: "
                f"{again} evaluates again")
    if resumed:   # a resume stopped before its first step: its checkpoints are untouched
        return (f"stopped by {name} during {phase} of a resume; nothing new was written: "
                f"{again} continues from the last checkpoint again")
    if not written:   # the run directory holds nothing yet: --resume would be refused
        return (f"stopped by {name} during {phase}, before anything was written; the same "
                f"command starts the run again")
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
    lock = RunDirLock(run_dir, "vmc resume" if resume else "vmc run",
                      "run_dir" if resume else "--out")
    with lock:
        if resume:   # (a fresh run takes the lock once it has made the directory)
            claim(lock)
        return _locked_train_run(cfg, run_dir, resume, init_from, log, wall_start, lock)


def _locked_train_run(cfg, run_dir, resume, init_from, log, wall_start, lock) -> int:
    if resume:
        if ckpt.list_checkpoints(run_dir / "checkpoints"):
            changed = check_resume_config(cfg, run_dir)
            if changed:
                log(f"resume: changed settings: {shown_changes(changed)}")
        else:
            changed = changed_settings(cfg, run_dir)
            log(f"resume: no checkpoint yet in {run_dir} (stopped before the first one); "
                f"starting from the beginning" + (
                    f": the run restarts from step 0 with the changed settings "
                    f"{shown_changes(changed)} (any "
                    f"setting may change until the first checkpoint; after it, only those a "
                    f"resume may change)" if changed else ""))
            resume = False
            if parallel.is_writer():   # (before the barrier below: before any write)
                (run_dir / "train.h5").unlink(missing_ok=True)  # that attempt's rows
    checked = check_run_input(cfg, resume=resume, init_from=init_from, log=log)
    parallel.barrier("vmc-input-checked")   # every process checked before process 0 writes
    with _RaiseOnSignal(), DirectoryGuard(run_dir):
        phase = ["setup"]
        try:
            return _train_run(cfg, run_dir, resume, init_from, log, wall_start, phase,
                              checked, lock)
        except Interrupted as err:
            _drain()
            log(_interrupted_message(err, phase[0], resumed=resume,
                                     written=holds_run(run_dir)))
            return EXIT_INTERRUPTED


def _train_run(cfg, run_dir, resume, init_from, log, wall_start, phase, checked,
               lock) -> int:
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
    claim(lock)   # (held already when resuming)
    if parallel.is_writer():
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    attach_log(log)   # run.log from here on (with the lines logged so far)
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
        log(f"evaluation skipped (eval.steps=0); `vmc eval {run_dir}` evaluates the final "
            f"checkpoint; results in {run_dir}")
    write_summary(setup, run_dir, state.params, result, wall_s=time.time() - wall_start,
                  log=log)
    return EXIT_OK


def used_eval_seeds(run_dir: pathlib.Path) -> dict:
    """{seed: group} of the evaluations in run_dir/eval.h5 ({} without the file)."""
    path = pathlib.Path(run_dir) / "eval.h5"
    if not path.is_file():
        return {}
    out = {}
    with h5io.open_read(path) as f:
        for name in sorted(f):
            seed = f[name].attrs.get("seed")
            if seed is not None:
                out.setdefault(int(seed), name)
    return out


def fresh_seed(run_dir: pathlib.Path, seed: int, log: Callable = print) -> int:
    """`seed`, or the next seed above every one in eval.h5 when `seed` is already there (an
    evaluation with a used seed of the same checkpoint would repeat it bit for bit)."""
    used = used_eval_seeds(run_dir)
    if seed not in used:
        return seed
    new = max(used) + 1
    log(f"evaluation: seed {seed} was used by {used[seed]} in eval.h5; using seed {new}")
    return new


def run_evaluation(setup: Setup, params, mcmc: MCMCState, run_dir: pathlib.Path, *, steps: int,
                   walkers: int, seed: int, burn_in: int, checkpoint_step: int,
                   log: Callable = print, observables=None):
    """Frozen-parameter evaluation into a new eval.h5 group; returns (group, EvalResult,
    seed). A seed already in eval.h5 is replaced by a fresh one (`fresh_seed`).

    observables: names to sample beside the energy (default `eval.observables`); their
    per-step columns go into the same group (vmc.obs_report.COLUMNS)."""
    seed = fresh_seed(run_dir, seed, log)
    ev = setup.cfg.eval
    names = tuple(ev.observables if observables is None else observables)
    start_walkers = resize_walkers(parallel.to_host(mcmc.walkers), walkers)
    bar = _progress(setup.cfg, steps + burn_in, "eval")
    target = None if ev.target_stderr_mha is None else 1e-3 * ev.target_stderr_mha

    def progress(i, n):
        if bar.total != n:
            bar.total = n
        bar.update(1)

    result = evaluate(setup, params, start_walkers, float(mcmc.width), steps=steps,
                      burn_in=burn_in, key=jax.random.PRNGKey(seed),
                      progress=progress if bar else None, observables=names,
                      target_stderr=target, max_steps=max(ev.max_steps, steps))
    asked, steps = steps, len(result.energy)
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
    log(f"evaluation {group}: {steps} steps x {walkers} walkers, seed {seed}, in "
        f"{result.seconds:.1f} s" + (f" (with {', '.join(names)})" if names else "")
        + (f"; ran past {asked} steps for the error-bar target {ev.target_stderr_mha:g} mHa"
           if steps > asked else ""))
    if target is not None:
        from vmc.evaluate import target_met, target_missed_warning
        met, got = target_met(result.energy, target)
        if not met:
            log(target_missed_warning(group, got.stderr, got.plateau, steps,
                                      ev.target_stderr_mha))
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
    return group, result, seed


def eval_run(run_dir: pathlib.Path, *, steps: Optional[int] = None,
             walkers: Optional[int] = None, seed: Optional[int] = None,
             burn_in: Optional[int] = None, log: Callable = print,
             observables: Optional[str] = None, target_stderr_mha: Optional[float] = None,
             max_steps: Optional[int] = None) -> int:
    """`vmc eval`: evaluate the newest valid checkpoint with a fresh seed; update summary.json.

    observables: comma-separated names (vmc.obs_report.OBSERVABLES) to sample beside the
    energy; None: the run's `eval.observables`. target_stderr_mha, max_steps: override the
    run's eval.target_stderr_mha and eval.max_steps (evaluate past `steps` to that error bar).

    Raises:
      InputError: not a run directory, a key given twice in its config.yaml, no valid
        checkpoint, a target ≤ 0 or a cap < 16.
    """
    from vmc.config import load_config
    wall_start = time.time()
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"run_dir {str(run_dir)!r}: no config.yaml; not a run directory")
    check_writable(run_dir, "run_dir")
    cfg = load_config(run_dir / "config.yaml")
    for name, v, lo in (("--steps", steps, 16), ("--walkers", walkers, 2),
                        ("--burn-in", burn_in, 0), ("--max-steps", max_steps, 16)):
        if v is not None and v < lo:
            raise InputError(f"{name}: {v} is not valid; valid: >= {lo}"
                             + (" (reblocking needs 16 samples)" if lo == 16 else ""))
    if cfg.eval.steps == 0 and steps is None:
        steps = 2000
    if target_stderr_mha is not None and not target_stderr_mha > 0:
        raise InputError(f"--target-stderr-mha: {target_stderr_mha} is not valid; valid: > 0")
    if target_stderr_mha is not None or max_steps is not None:
        import dataclasses
        ev = dataclasses.replace(
            cfg.eval, target_stderr_mha=cfg.eval.target_stderr_mha if target_stderr_mha is None
            else target_stderr_mha, max_steps=cfg.eval.max_steps if max_steps is None
            else max_steps)
        cfg = dataclasses.replace(cfg, eval=ev)
    used = used_eval_seeds(run_dir)
    from vmc.config_schema import SEED_MAX
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed: {seed} is out of range; valid: 0 <= seed <= {SEED_MAX}")
    if seed is not None and seed in used:
        raise InputError(f"--seed: {seed} was used by {used[seed]} in eval.h5 (it would repeat "
                         f"that evaluation); valid: a seed not in {sorted(used)}, or no --seed")
    if observables is not None:
        import dataclasses
        from vmc.obs_report import parse_observables
        names = parse_observables(observables, "--observables")
        if "forces" in names:
            from vmc.obs_report import check_forces_supported
            check_forces_supported(cfg)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, observables=names))
    with _RaiseOnSignal(), RunDirLock(run_dir, "vmc eval") as lock:
        claim(lock)
        try:
            return _eval_run(cfg, run_dir, steps, walkers, seed, burn_in, log, wall_start)
        except Interrupted as err:
            _drain()
            log(_interrupted_message(err, "evaluation", again="`vmc eval`"))
            return EXIT_INTERRUPTED


def _eval_run(cfg, run_dir, steps, walkers, seed, burn_in, log, wall_start) -> int:
    setup = build(cfg)
    state, step, _ = _restore(setup, run_dir, log, what="vmc eval")
    attach_log(log)
    old = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    used = ({e.get("seed") for e in old.get("evaluations", [])} | {cfg.eval.seed}
            | set(used_eval_seeds(run_dir)))
    if seed is None:
        seed = max(s for s in used if s is not None) + 1
    result = run_evaluation(setup, state.params, state.mcmc, run_dir,
                            steps=cfg.eval.steps if steps is None else steps,
                            walkers=walkers or cfg.eval.walkers, seed=seed,
                            burn_in=cfg.eval.burn_in if burn_in is None else burn_in,
                            checkpoint_step=step, log=log)
    write_summary(setup, run_dir, state.params, result, wall_s=time.time() - wall_start,
                  log=log)
    return EXIT_OK
