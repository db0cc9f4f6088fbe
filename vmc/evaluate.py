"""Frozen-parameter evaluation: burn-in, then per-step walker-mean local energies.

A non-finite local energy (NaN or Inf, e.g. a float32 fault in one walker) never ends the
evaluation: it is left out of that step's mean and variance and counted per step
(`EvalResult.nonfinite`, eval.h5 `nonfinite`); the summary reports the count and fraction.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vmc.parallel import to_host
from vmc.sampler import MCMCState, make_sampler


class EvalResult(NamedTuple):
    """Per-step series of one evaluation (numpy, float64).

    energy: (steps,) walker-mean E_L, hartree; variance: (steps,) Ha²; pmove: (steps,);
    walkers: (n_walkers, n_electrons, 3) bohr at the end; width: final proposal width, bohr;
    nonfinite: (steps,) number of walkers whose E_L was not finite (left out of the step's
    mean; a step with no finite E_L has NaN energy).
    observables: {name: (steps, ...) float64} per-step walker means from
    `vmc.observables.make_observables` (empty when none was asked for).
    """
    energy: np.ndarray
    variance: np.ndarray
    pmove: np.ndarray
    walkers: np.ndarray
    width: float
    seconds: float
    nonfinite: np.ndarray = np.zeros(0)
    observables: dict = {}


def eval_poison() -> tuple[set[int] | str, int]:
    """Test-only fault injection: VMC_FAULT_INJECT=eval_nan_walkers=K@3,7 (or @all) makes the
    local energies of the first K walkers NaN at those recorded evaluation steps."""
    spec = os.environ.get("VMC_FAULT_INJECT", "")
    if not spec.startswith("eval_nan_walkers="):
        return set(), 0
    count, which = spec.split("=", 1)[1].split("@", 1)
    return ("all" if which == "all" else {int(t) for t in which.split(",") if t}), int(count)


def walker_mean(e, good):
    """(mean, variance, non-finite count) of e (n_w,) over the walkers where good is True,
    float64; mean and variance are NaN when none is."""
    e = e.astype(jnp.float64)
    n = jnp.sum(good).astype(jnp.float64)
    mean = jnp.sum(jnp.where(good, e, 0.0)) / n
    var = jnp.sum(jnp.where(good, (e - mean) ** 2, 0.0)) / n
    return mean, var, e.shape[0] - n


def resize_walkers(walkers, n_walkers: int):
    """Take `n_walkers` walkers from `walkers` (n_w, n, 3), cycling when more are needed."""
    idx = np.arange(n_walkers) % walkers.shape[0]
    return walkers[idx]


def _jitted_steps(setup, observables: tuple):
    """(burn, record): the jitted burn-in step `(params, state, key) -> (state, pmove)` and
    recorded step `(params, state, key, poison) -> (state, row, obs)` of `setup`, made once
    per setup and observable set and kept on the setup: another evaluation with the same
    setup (the next chunk of a long evaluation, another checkpoint) traces nothing again."""
    cache = setup.__dict__.setdefault("_evaluation_jits", {})
    if observables in cache:
        return cache[observables]
    s = setup.cfg.sampler
    _, adapt_step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove, s.adapt_rate)
    _, frozen_step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove, 0.0)
    batched_e_l = setup.eval_local_energy   # with the float64 rescue (hamiltonian.f64_rescue)
    obs_fn = None
    if observables:
        from vmc.observables import make_observables
        obs_fn = make_observables(setup, tuple(observables), setup.cfg.eval)

    # the parameters are an argument, not constants baked into the program: a second
    # evaluation of the same shapes (another checkpoint, `vmc eval`) then finds the
    # compiled program in the persistent compilation cache instead of compiling again
    @jax.jit
    def record(p, state, k, poison):
        state, pmove = frozen_step(p, state, k)
        e = batched_e_l(p, state.walkers, setup.ecp_key(k))
        e = jnp.where(jnp.arange(e.shape[0]) < poison, jnp.nan, e)
        good = jnp.isfinite(e)
        mean, var, bad = walker_mean(e, good)
        obs = {} if obs_fn is None else obs_fn(p, state.walkers, e, good,
                                               jax.random.fold_in(k, 1 << 20))
        return state, jnp.stack([mean, var, pmove.astype(jnp.float64), bad]), obs

    cache[observables] = (jax.jit(adapt_step), record)
    return cache[observables]


def make_record_step(setup, params, observables=()):
    """The jitted recorded evaluation step `(state, key, poison) -> (state, row, obs)`.

    Frozen-width Metropolis moves, the local energies, then the observables on the same
    walkers (vmc.observables.make_observables). row: (4,) float64 [mean E_L (Ha), variance
    (Ha²), pmove, non-finite count]; obs: {name: per-step array}. `poison` (test-only) makes
    the E_L of the first `poison` walkers NaN.
    """
    record = _jitted_steps(setup, tuple(observables))[1]
    return lambda state, k, poison: record(params, state, k, poison)


def target_met(energy: np.ndarray, target: float):
    """(whether the reblocked error bar of the finite `energy` (n,) Ha is ≤ `target` Ha with a
    plateau, the `vmc.reblock.ReblockResult`)."""
    from vmc.reblock import reblock
    r = reblock(np.asarray(energy)[np.isfinite(energy)])
    return bool(r.plateau and r.stderr <= target), r


def target_missed_warning(group: str, stderr_ha: float, plateau: bool, steps: int,
                          target_mha: float) -> str:
    """The warning line for an evaluation that ended at eval.max_steps without meeting
    eval.target_stderr_mha: its reblocked error bar `stderr_ha` (Ha) is above the target, or
    within it but without a reblocking plateau (then only a lower bound, which a target does
    not accept; `target_met`)."""
    bar = 1e3 * stderr_ha
    head = f"warning: evaluation {group}: error bar {bar:.3g} mHa"
    if stderr_ha > 1e-3 * target_mha:   # as run_evaluation's target, Ha
        return (f"{head}{'' if plateau else ' (no reblocking plateau: a lower bound)'} after "
                f"{steps} steps (eval.max_steps), above eval.target_stderr_mha "
                f"{target_mha:g}; `vmc eval` with a larger eval.max_steps, or more walkers, "
                f"gets closer")
    return (f"{head} after {steps} steps (eval.max_steps) is within eval.target_stderr_mha "
            f"{target_mha:g}, but reblocking found no plateau, so it is only a lower bound and "
            f"the target is not met; `vmc eval` with a larger eval.max_steps (a longer series) "
            f"can find one")


def next_length(energy: np.ndarray, target: float, max_steps: int) -> int:
    """The recorded length an evaluation should reach for a reblocked error bar ≤ `target`.

    Args:
      energy: (n,) per-step walker-mean E_L so far, Ha; target: error bar, Ha; max_steps: cap.
    Returns:
      n when the reblocked standard error is already ≤ target with a plateau (Flyvbjerg &
      Petersen; `vmc.reblock`) or n ≥ max_steps; else min(max_steps, n'), n' = 1.1 n (σ/target)²
      (σ_mean ∝ 1/√n at a fixed autocorrelation time), at least n + n/4.
    """
    n = len(energy)
    if n >= max_steps:
        return n
    met, r = target_met(energy, target)
    if met:
        return n
    want = int(np.ceil(1.1 * n * (r.stderr / target) ** 2))
    return int(min(max_steps, max(want, n + max(n // 4, 1))))


def evaluate(setup, params, walkers, width, *, steps: int, burn_in: int, key,
             progress=None, observables=None, target_stderr: float | None = None,
             max_steps: int | None = None) -> EvalResult:
    """Sample |ψ|² with frozen parameters and record the local energy per step.

    The proposal width adapts during burn-in and is frozen afterwards, so the recorded chain
    is a plain Metropolis chain. With `target_stderr` the chain goes on past `steps` until the
    reblocked error bar of the energy is at most that, or `max_steps` steps are recorded
    (`next_length`); the chain is the same as a fixed-length evaluation of the final length
    (step t uses the same key either way).

    Args:
      setup: `vmc.train.Setup`; params: the parameters to evaluate.
      walkers: (n_walkers, n_electrons, 3) starting walkers, bohr; width: initial width, bohr.
      steps: recorded steps (each `sampler.moves` Metropolis moves); burn_in: unrecorded steps.
      key: PRNG key; step t uses fold_in(key, t).
      progress: optional callable(i, total) for a progress display.
      observables: names (vmc.observables.OBSERVABLES) sampled in the same jitted step on
        the same walkers; default `setup.cfg.eval.observables`.
      target_stderr: error bar to reach, Ha (None: exactly `steps` steps); max_steps: the
        cap with a target (None: 25 × steps).
    """
    s = setup.cfg.sampler
    init_mcmc, _ = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove, s.adapt_rate)
    names = tuple(setup.cfg.eval.observables if observables is None else observables)
    record = make_record_step(setup, params, names)
    burn_step = _jitted_steps(setup, names)[0]   # params as an argument (see _jitted_steps)

    def burn(state, k):
        return burn_step(params, state, k)

    poison, poison_count = eval_poison()

    state: MCMCState = init_mcmc(params, jnp.asarray(walkers), width)
    start = time.time()
    for t in range(burn_in):
        state, _ = burn(state, jax.random.fold_in(key, t))
        if progress:
            progress(t + 1, burn_in + steps)
    rows, obs_rows = [], []
    total, t = steps, 0
    cap = max(steps, 25 * steps if max_steps is None else max_steps)
    while t < total:
        hit = poison == "all" or (isinstance(poison, set) and t in poison)
        state, row, obs = record(state, jax.random.fold_in(key, burn_in + t),
                                 jnp.asarray(poison_count if hit else 0, jnp.int32))
        rows.append(row)
        obs_rows.append(obs)
        t += 1
        if progress:
            progress(burn_in + t, burn_in + total)
        if t == total and target_stderr is not None:   # one read-back per extension
            total = next_length(np.asarray(jnp.stack(rows))[:, 0], target_stderr, cap)
    out = np.asarray(jnp.stack(rows)) if rows else np.zeros((0, 4))
    series = ({k: np.asarray(jnp.stack([o[k] for o in obs_rows]), np.float64)
               for k in obs_rows[0]} if obs_rows else {})
    return EvalResult(out[:, 0], out[:, 1], out[:, 2], to_host(state.walkers),
                      float(state.width), time.time() - start, out[:, 3], series)
