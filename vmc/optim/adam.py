"""Adam (optax) on the energy gradient g = 2 Cov(E_L, O): the first-order baseline."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vmc.optim.sr import (Optimizer, OptStats, centred_energies, clip_local_energy,
                          energy_gradient, lr_schedule)


def make_adam(cfg, log_psi: Callable) -> Optimizer:
    """Adam with η_t = η₀/(1 + t/t₀) on the clipped energy gradient (no F, no norm constraint).

    Args:
      cfg: `vmc.config.OptimConfig` (lr, lr_decay_steps, adam_b1, adam_b2, clip).
    """
    schedule = lr_schedule(cfg.lr, cfg.lr_decay_steps)
    tx = optax.adam(learning_rate=schedule, b1=cfg.adam_b1, b2=cfg.adam_b2)

    def update(params, state, walkers, e_l, step, mask=None):
        e_clip, frac = clip_local_energy(e_l, cfg.clip, mask)
        eps = centred_energies(e_clip.astype(jnp.float64), mask)
        g_half = energy_gradient(log_psi, params, walkers, eps, mask)
        grad = jax.tree_util.tree_map(lambda g: 2.0 * g, g_half)
        updates, state = tx.update(grad, state, params)
        new = optax.apply_updates(params, updates)
        norm = optax.tree.norm(updates).astype(jnp.float64)
        one, zero = jnp.ones((), jnp.float64), jnp.zeros((), jnp.float64)
        return new, state, OptStats(jnp.asarray(schedule(step), jnp.float64), norm, one, frac,
                                    zero, zero)

    return Optimizer(tx.init, update)
