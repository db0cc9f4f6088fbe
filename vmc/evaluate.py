"""Frozen-parameter evaluation: burn-in, then per-step walker-mean local energies."""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vmc.sampler import MCMCState, make_sampler


class EvalResult(NamedTuple):
    """Per-step series of one evaluation (numpy, float64).

    energy: (steps,) walker-mean E_L, hartree; variance: (steps,) Ha²; pmove: (steps,);
    walkers: (n_walkers, n_electrons, 3) bohr at the end; width: final proposal width, bohr.
    """
    energy: np.ndarray
    variance: np.ndarray
    pmove: np.ndarray
    walkers: np.ndarray
    width: float
    seconds: float


def resize_walkers(walkers, n_walkers: int):
    """Take `n_walkers` walkers from `walkers` (n_w, n, 3), cycling when more are needed."""
    idx = np.arange(n_walkers) % walkers.shape[0]
    return walkers[idx]


def evaluate(setup, params, walkers, width, *, steps: int, burn_in: int, key,
             progress=None) -> EvalResult:
    """Sample |ψ|² with frozen parameters and record the local energy per step.

    The proposal width adapts during burn-in and is frozen afterwards, so the recorded chain
    is a plain Metropolis chain.

    Args:
      setup: `vmc.train.Setup`; params: the parameters to evaluate.
      walkers: (n_walkers, n_electrons, 3) starting walkers, bohr; width: initial width, bohr.
      steps: recorded steps (each `sampler.moves` Metropolis moves); burn_in: unrecorded steps.
      key: PRNG key; step t uses fold_in(key, t).
      progress: optional callable(i, total) for a progress display.
    """
    s = setup.cfg.sampler
    init_mcmc, adapt_step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove,
                                         s.adapt_rate)
    _, frozen_step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove, 0.0)
    batched_e_l = setup.batched_local_energy

    @jax.jit
    def burn(state, k):
        return adapt_step(params, state, k)

    @jax.jit
    def record(state, k):
        state, pmove = frozen_step(params, state, k)
        e = batched_e_l(params, state.walkers).astype(jnp.float64)
        return state, jnp.stack([jnp.mean(e), jnp.var(e), pmove.astype(jnp.float64)])

    state: MCMCState = init_mcmc(params, jnp.asarray(walkers), width)
    start = time.time()
    for t in range(burn_in):
        state, _ = burn(state, jax.random.fold_in(key, t))
        if progress:
            progress(t + 1, burn_in + steps)
    rows = []
    for t in range(steps):
        state, row = record(state, jax.random.fold_in(key, burn_in + t))
        rows.append(row)
        if progress:
            progress(burn_in + t + 1, burn_in + steps)
    out = np.asarray(jnp.stack(rows)) if rows else np.zeros((0, 3))
    return EvalResult(out[:, 0], out[:, 1], out[:, 2], np.asarray(state.walkers),
                      float(state.width), time.time() - start)
