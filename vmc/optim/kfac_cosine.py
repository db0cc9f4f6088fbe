"""How close an approximate SR direction is to the exact one on the same batch (diagnostic).

The exact damped SR direction of one batch, d* = (F + λI)⁻¹ĝ with F = ŌᵀŌ and ĝ = Ōᵀε
(MATH.md §3), solved in sample space: d* = Ōᵀ(ŌŌᵀ + λI)⁻¹ε (minSR; Chen & Heyl 2023),
an n_w × n_w Cholesky in float64 (O formed per parameter leaf: n_w p memory; the solve is
cheap for n_w ≲ 1024). The measure of an approximate direction d is cos∠(d, d*) in the
Euclidean metric of the flat parameter vector. Used by `optim.kfac_cosines` and
scripts/bench_kfac_centred.py.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vmc.optim.sr import JacobianBlocks, jacobian_blocks

F64 = jnp.float64


def exact_sr_direction(log_psi: Callable, params, walkers, eps, damping: float, mask=None,
                       chunk: int | None = None):
    """d* = Ōᵀ(ŌŌᵀ + λI)⁻¹ε, (p,) float64 in ravel order (`vmc.optim.sr.float64_ravel`).

    Args:
      log_psi: (params, x (n_electrons, 3)) -> (sign, logabs).
      walkers: (n_w, n_electrons, 3) bohr; eps: (n_w,) centred energies ε (hartree/√n_w, 0
        for walkers left out); damping: λ > 0 (ŌŌᵀ is singular); mask: (n_w,) bool good
        walkers (None: all); chunk: walkers per per-walker-gradient chunk (None: all).
    """
    blocks = jacobian_blocks(log_psi, params, walkers, chunk)
    o = JacobianBlocks.build(blocks, mask, walkers.shape[0])
    t = o.gram() + damping * jnp.eye(o.n_w, dtype=F64)
    y = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(t, lower=True),
                                   eps.astype(F64))
    return o.rmatvec(y)


def cosine(x, y) -> jax.Array:
    """cos∠(x, y) = xᵀy/(‖x‖‖y‖) of two flat vectors, float64 (0 if either is 0)."""
    x, y = x.astype(F64), y.astype(F64)
    den = jnp.linalg.norm(x) * jnp.linalg.norm(y)
    return jnp.where(den > 0, jnp.dot(x, y) / jnp.where(den > 0, den, 1.0), 0.0)
