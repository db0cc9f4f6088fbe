"""Step schedules of the SR solvers: the learning rate and the damping, η_t and λ_t."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def lr_schedule(lr: float, decay_steps: float) -> Callable[[jax.Array], jax.Array]:
    """η_t = η₀ / (1 + t/t₀) (FermiNet's schedule), an optax-style schedule."""
    def schedule(step):
        return lr / (1.0 + step / decay_steps)
    return schedule


def damping_schedule(damping: float, decay_steps: Optional[float],
                     damping_min: float) -> Callable[[jax.Array], jax.Array]:
    """The SR damping at update t: λ_t = max(λ_min, λ₀ / (1 + t/t_λ)), or λ₀ if t_λ is None.

    The same hyperbolic decay as the learning rate (`lr_schedule`): a large λ early damps the
    directions that only fit one batch's noise, a small one late keeps the small-eigenvalue
    directions the converged wavefunction needs (README "What the damping costs in long
    runs"; measured there on C and N: no better than a constant λ at 16000 steps).
    Returns float64 values; λ_min is clipped to at most λ₀.
    """
    if decay_steps is None:
        return lambda step: jnp.asarray(damping, jnp.float64)
    floor = min(damping_min, damping)

    def schedule(step):
        lam = damping / (1.0 + jnp.asarray(step, jnp.float64) / decay_steps)
        return jnp.maximum(lam, floor)
    return schedule
