"""SPRING: sample-space SR with momentum (Goldshlager, Abrahamsen, Lin, J. Comput. Phys. 2024,
arXiv:2401.10190; MATH.md §3).

    φ_k = μ φ_{k−1} + Ōᵀ(ŌŌᵀ + λI)⁻¹(ε − μ Ō φ_{k−1}),   θ ← θ − η s φ_k

i.e. φ_k = argmin ‖Ōφ − ε‖² + λ‖φ − μφ_{k−1}‖². μ = 0 is plain sample-space SR (minSR);
μ at or near 1 diverges. φ_k (before η and s) is the optimizer state. The n_w × n_w solve
runs in float64, and so do the products with Ō, accumulated over column chunks
(no float64 copy of Ō). Ō (n_w × p, the network's dtype) is formed: memory O(n_w p).

Norm constraint: s = min(1, √(C / (η² φᵀ(F + λI)φ))) with F = ŌᵀŌ, which equals ĝᵀφ at
μ = 0 (FermiNet's convention, ĝ = Cov(E_L, O) = g/2, as in `vmc.optim.sr`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from vmc.errors import InputError
from vmc.optim.sr import (JacobianBlocks, Optimizer, OptStats, apply_direction,
                          centred_energies, clip_local_energy, finite_rows, float64_ravel,
                          jacobian_blocks, lr_schedule, norm_constraint_scale)

F64 = jnp.float64


class SpringState(NamedTuple):
    """phi: (p,) float64, the last direction φ_{k−1} (ravel_pytree order of the params)."""
    phi: jax.Array


def spring_direction(o, eps, phi_prev, damping: float, mu: float, mask=None):
    """φ = μ φ_prev + Ōᵀ(ŌŌᵀ + λI)⁻¹(ε − μ Ō φ_prev), float64 (products accumulated in
    float64, Cholesky solve in float64).

    Args:
      o: (n_w, p) Jacobian O of log|ψ| (uncentred; the centring is applied here), or a list
        of its column blocks (any float dtype); eps: (n_w,) centred energies / √n_w;
        phi_prev: (p,); damping: λ > 0; mu: μ in [0, 1); mask: (n_w,) bool good walkers
        (None: all), see `JacobianBlocks`.
    Returns:
      (φ (p,) float64, Ōφ (n_w,) float64).
    """
    o = JacobianBlocks.build(list(o) if isinstance(o, (list, tuple)) else [o], mask,
                             eps.shape[0])
    t = o.gram() + damping * jnp.eye(o.n_w, dtype=F64)
    rhs = eps.astype(F64) - mu * o.matvec(phi_prev)
    y = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(t, lower=True), rhs)
    phi = mu * phi_prev + o.rmatvec(y)
    return phi, o.matvec(phi)


def make_spring(cfg, log_psi: Callable) -> Optimizer:
    """SPRING with μ = `optim.spring_mu` and λ = `optim.damping` (> 0).

    Args:
      cfg: `vmc.config.OptimConfig` (lr, lr_decay_steps, damping, norm_constraint, clip,
        spring_mu).
    Raises:
      InputError: damping <= 0.
    """
    if not cfg.damping > 0:
        raise InputError(f"optim.damping: {cfg.damping} is not valid for spring; valid: > 0 "
                         f"(ŌŌᵀ is singular)")
    schedule = lr_schedule(cfg.lr, cfg.lr_decay_steps)

    def init(params):
        p = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
        return SpringState(jnp.zeros((p,), F64))

    def update(params, state, walkers, e_l, step, mask=None):
        blocks = jacobian_blocks(log_psi, params, walkers, cfg.jacobian_chunk)
        if mask is not None:   # a walker with a non-finite O is left out too
            mask = mask & finite_rows(blocks, walkers.shape[0])
        e_clip, frac = clip_local_energy(e_l, cfg.clip, mask)
        eps = centred_energies(e_clip.astype(F64), mask)
        phi, o_phi = spring_direction(blocks, eps, state.phi, cfg.damping, cfg.spring_mu,
                                      mask)
        curvature = jnp.dot(o_phi, o_phi) + cfg.damping * jnp.dot(phi, phi)
        lr = schedule(step)
        scale = norm_constraint_scale(curvature, lr, cfg.norm_constraint)
        _, unravel = float64_ravel(params)
        new, norm = apply_direction(params, unravel(phi), lr, scale)
        zero = jnp.zeros((), F64)
        return new, SpringState(phi), OptStats(lr, norm, scale, frac, zero, zero)

    return Optimizer(init, update)
