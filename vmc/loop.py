"""The host-side training loop: logging, train.h5 rows, checkpoints, signals, NaN policy.

The loop only calls the jit-compiled step (vmc.train) and owns every side effect:

* walkers with a non-finite E_L or log|ψ| are left out of the step inside the jitted step
  (vmc.train.screen_walkers) and counted in the `bad_walkers` column;
* a step whose energy or update is not finite, or with more than `run.max_bad_walkers` of
  its walkers bad, is rejected: parameters and walkers stay, the `rejected` column of
  train.h5 (a running count) goes up by one, and a warning is printed. The row of a rejected
  step holds the statistics of the rejected sample (over its good walkers; NaN when none);
  `vmc.analysis.train_tail` skips such rows;
* after `run.max_bad_steps` consecutive rejected steps the caller rolls back (see vmc.run);
* checkpoints every `run.checkpoint_every` steps or `run.checkpoint_minutes`, at the end, and
  between steps after SIGTERM / SIGINT / SIGUSR1 or when `run.max_minutes` is reached
  (counted from the process's start, `vmc.START_TIME`, as a batch job's time limit is).
"""

from __future__ import annotations

import enum
import os
import pathlib
import signal
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

import vmc
from vmc import checkpoint as ckpt, parallel
from vmc.config import dump_yaml
from vmc.train import StepStats, TrainState, step_accepted


class Outcome(enum.Enum):
    """How a training loop ended."""
    FINISHED = "finished"
    INTERRUPTED = "interrupted"   # signal or run.max_minutes: checkpointed, resumable
    DIVERGED = "diverged"         # run.max_bad_steps consecutive non-finite steps


class SignalFlag:
    """Records SIGTERM/SIGINT/SIGUSR1; the loop checks it between steps (never acts inside
    the handler)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self):
        self.received: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


ALL_WALKERS = 1 << 30


def poison_steps() -> tuple[set[int] | str, int]:
    """Test-only fault injection: VMC_FAULT_INJECT=nan_energy@5,9 (or @all) makes every local
    energy of those training steps NaN inside the jitted step; nan_walkers=K@5,9 only the
    first K walkers'. Returns (steps or 'all', walkers per poisoned step)."""
    spec = os.environ.get("VMC_FAULT_INJECT", "")
    if spec.startswith("nan_energy@"):
        count = ALL_WALKERS
    elif spec.startswith("nan_walkers="):
        count = int(spec.split("=", 1)[1].split("@", 1)[0])
    else:
        return set(), 0
    which = spec.split("@", 1)[1]
    return ("all" if which == "all" else {int(s) for s in which.split(",") if s}), count


def save_checkpoint(run_dir: pathlib.Path, state: TrainState, step: int, cfg, keep: int,
                    extra_attrs: Optional[dict] = None) -> pathlib.Path:
    """Write checkpoints/ckpt_<step>.h5 atomically and prune to the newest `keep` (those at
    `run.keep_steps` are never pruned).

    Every process calls it: the walkers are gathered from all processes (a collective), and
    process 0 alone writes and prunes.
    """
    d = run_dir / "checkpoints"
    path = ckpt.checkpoint_path(d, step)
    host = parallel.to_host({"params": state.params, "opt_state": state.opt_state,
                             "mcmc": state.mcmc})
    if parallel.is_writer():
        d.mkdir(parents=True, exist_ok=True)
        attrs = {"step": int(step), "config": dump_yaml(cfg), **(extra_attrs or {})}
        ckpt.save(path, host, attrs)
        ckpt.prune(d, keep, protect=cfg.run.keep_steps)
    return path


def _row(t: int, stats: dict, rejected: int, seconds: float) -> dict:
    row = {"step": t, **{k: float(v) for k, v in stats.items()}}
    row["rejected"] = float(rejected)
    row["step_time"] = seconds
    return row


class _Progress:
    """Step times (the first step, which compiles, left out) and recent energies for the
    console line: step/total, energy, running mean ± error, ETA."""

    WINDOW = 100

    def __init__(self, start: int):
        self.start = start
        self.energies: list = []
        self.seconds: list = []

    def add(self, t: int, energy: float, seconds: float) -> None:
        if np.isfinite(energy):
            self.energies = (self.energies + [energy])[-self.WINDOW:]
        if t > self.start + 1:
            self.seconds.append(seconds)

    def line(self, t: int, steps: int, stats: dict) -> str:
        e = np.asarray(self.energies)
        mean = ""
        if e.size >= 2:
            from vmc.reblock import MIN_SAMPLES, reblock
            se = reblock(e).stderr if e.size >= MIN_SAMPLES else e.std(ddof=1) / np.sqrt(e.size)
            mean = f"  mean(last {e.size}) {e.mean():+.6f} ± {se:.6f} Ha"
        rate = float(np.mean(self.seconds[-self.WINDOW:])) if self.seconds else None
        timing = "" if rate is None else (f"  {rate:.3f} s/step  ETA "
                                          f"{_hms(rate * (steps - t))}")
        return (f"step {t:6d} / {steps}  E {stats['energy']:+.6f} Ha{mean}  "
                f"var {stats['variance']:.4g} Ha²  pmove {stats['pmove']:.3f}  "
                f"width {stats['width']:.3f} bohr{timing}")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _accepted(stats: dict, n_walkers: int, max_bad: float) -> bool:
    return bool(step_accepted(stats["energy"], stats["update_norm"], stats["bad_walkers"],
                              n_walkers, max_bad))


def run_loop(step_fn: Callable, state: TrainState, *, start: int, steps: int, train_key,
             cfg, run_dir: pathlib.Path, writer, log: Callable[[str], None],
             progress=None, rejected: int = 0) -> tuple[TrainState, int, Outcome, int]:
    """Run training steps `start` … `steps`−1.

    Args:
      step_fn: `vmc.train.make_train_step`'s `(state, key, t, poison) -> (state, StepStats)`,
        which returns its input state when it rejects the step (poison: the
        number of walkers whose E_L is made NaN, test-only).
      state: the state after `start` completed steps.
      train_key: step t uses `fold_in(train_key, t)`.
      writer: `vmc.h5io.StatsWriter` for train.h5.
      log: prints one console line.
      progress: optional tqdm bar (updated per step).
      rejected: rejected steps so far (restored on resume).
    Returns:
      (state, completed steps, outcome, rejected count).
    """
    r = cfg.run
    # the layout the step's outputs have (parameters replicated, walkers sharded), so the
    # second call does not compile the step again
    state = TrainState(parallel.replicate(state.params), parallel.replicate(state.opt_state),
                       state.mcmc.replace(walkers=parallel.shard_walkers(state.mcmc.walkers),
                                          logabs=parallel.shard_walkers(state.mcmc.logabs),
                                          width=parallel.replicate(state.mcmc.width)))
    poison, poison_count = poison_steps()
    n_walkers = int(state.mcmc.walkers.shape[0])
    bad_in_row = 0
    clock = _Progress(start)
    last_ckpt_time = last_done = time.time()

    def dispatch(s: TrainState, i: int):
        hit = poison == "all" or (isinstance(poison, set) and i in poison)
        return step_fn(s, jax.random.fold_in(train_key, i), i,
                       jnp.asarray(poison_count if hit else 0, jnp.int32))

    # In one process, step t+1 is queued before step t's stats are read back, so the host
    # work below runs while the device computes. The step keeps its input state itself when
    # it rejects (vmc.train.make_train_step), so the queued step starts from the right state
    # either way; a stop between steps drops the queued one (its state is not kept). With
    # several processes the read-back comes first: a peer lost during a queued step would
    # otherwise surface in the next collective's wait, which JAX ends by aborting the
    # process after its heartbeat timeout instead of raising (vmc.cli._lost_peer).
    ahead = jax.process_count() == 1
    t = start
    inflight = None
    with SignalFlag() as flag:
        while t < steps:
            if inflight is None:
                inflight = dispatch(state, t)
            new_state, stats = inflight
            inflight = dispatch(new_state, t + 1) if ahead and t + 1 < steps else None
            stats = {k: float(v) for k, v in jax.device_get(stats._asdict()).items()}
            state = new_state
            if _accepted(stats, n_walkers, r.max_bad_walkers):
                bad_in_row = 0
            else:
                rejected += 1
                bad_in_row += 1
                why = (f"{int(stats['bad_walkers'])} of {n_walkers} walkers non-finite"
                       if stats["bad_walkers"] > r.max_bad_walkers * n_walkers
                       else "non-finite energy or update")
                log(f"warning: step {t}: {why}; step rejected "
                    f"({bad_in_row} in a row, {rejected} in all)")
            if stats["pmove"] < 0.01:
                log(f"warning: step {t}: pmove {stats['pmove']:.3f}: walkers are stuck")
            now = time.time()
            seconds, last_done = now - last_done, now
            writer.append(_row(t, stats, rejected, seconds))
            t += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix_str(f"E={stats['energy']:.5f}", refresh=False)
            clock.add(t, stats["energy"], seconds)
            if t == start + 1:
                log(f"compile: the first step ({t} of {steps}) took {seconds:.1f} s with the "
                    f"compilation of the training step, done "
                    f"{time.time() - vmc.START_TIME:.1f} s after process start; the step times "
                    f"below leave it out")
            if t % r.log_every == 0 or t == steps:
                log(clock.line(t, steps, stats))
            if bad_in_row >= r.max_bad_steps:
                writer.flush()
                return state, t, Outcome.DIVERGED, rejected
            # a batch job's time limit counts from its start: Hartree–Fock, pretraining,
            # burn-in and compilation count too
            minutes = (time.time() - vmc.START_TIME) / 60
            # signals and clocks are per process: every process takes the same decision
            # (any process's), or one would enter a checkpoint gather the others never join
            signalled, out_of_time, clock_due = parallel.any_processes([
                flag.received is not None,
                r.max_minutes is not None and minutes >= r.max_minutes,
                r.checkpoint_minutes > 0
                and time.time() - last_ckpt_time >= 60 * r.checkpoint_minutes])
            stop = signalled or out_of_time
            due = t % r.checkpoint_every == 0 or t == steps or clock_due or t in r.keep_steps
            if stop or due:
                writer.flush()
                save_checkpoint(run_dir, state, t, cfg, r.keep_checkpoints,
                                {"rejected": rejected})
                last_ckpt_time = time.time()
            if stop:
                why = (f"signal {signal.Signals(flag.received).name}"
                       if flag.received is not None else "a signal to another process"
                       if signalled else f"run.max_minutes={r.max_minutes}")
                log(f"stopping after step {t} ({why}); checkpoint written; "
                    f"continue with --resume")
                return state, t, Outcome.INTERRUPTED, rejected
    writer.flush()
    return state, t, Outcome.FINISHED, rejected
