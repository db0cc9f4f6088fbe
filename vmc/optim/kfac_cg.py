"""The CG solve of 'kfac-cg': KFAC for the start, a Nyström sketch for the preconditioner.

Solves the exact damped SR system (F + λI) d = ĝ by preconditioned CG (`vmc.optim.cg.pcg`,
float64), with

- x₀ = α M⁻¹ĝ, the KFAC direction (`vmc.optim.kfac.precondition`, centred if
  `optim.kfac_centring` says so) scaled to minimise the quadratic ½xᵀ(F + λI)x − ĝᵀx along
  it: α = ĝᵀd_K / d_Kᵀ(F + λI)d_K (one F-product, which scaled by α is also PCG's
  (F + λI)x₀ for the initial residual);
- P⁻¹ = U diag((λ̂_ℓ + λ)/(λ̂_i + λ)) Uᵀ + (I − UUᵀ), a randomized Nyström sketch (U, λ̂) of
  this batch's F with ℓ = `optim.nystrom_rank` (`vmc.optim.nystrom`; ℓ products, rebuilt
  at every update, Ω from a fixed key folded with the update count, so a resumed run is
  bit-identical with nothing more in the checkpoint).

Why not M⁻¹ as the preconditioner (the earlier 'kfac-cg'). With n_w walkers F = ŌᵀŌ has rank
≤ n_w − 1, so F + λI has p − n_w + 1 eigenvalues equal to λ, one cluster that plain CG
resolves in one step. A full-rank preconditioner maps that cluster onto the spread spectrum
of λM⁻¹, which CG must then resolve direction by direction: measured on one He batch
(scripts/bench_pcg.py, λ = 1e-3, tolerance 1e-4) 875 iterations against plain CG's 131. P⁻¹
above is the identity off U and keeps the cluster whole (`vmc.optim.nystrom`: 44 iterations
with ℓ = 16). KFAC's direction has a low cosine to the exact SR direction (0.03–0.12 on Li
and LiH, README), so as a start it saves nothing measurable (−2 % to +7 % iterations against
x₀ = 0 on He and Li, with and without P⁻¹); it is kept because it is free here (KFAC's
factors are this optimizer's state) and with `optim.cg_maxiter: 0` the update is KFAC's
direction under the exact-F norm constraint.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from vmc.optim.cg import linearize_fisher, pcg
from vmc.optim.nystrom import fresh_sketch, nystrom_preconditioner, sketch_rank

F64 = jnp.float64


def kfac_started_pcg(cfg, log_psi: Callable, params, walkers, b, d_kfac, count, mask=None):
    """PCG on (F + λI) d = ĝ from x₀ = α M⁻¹ĝ with a fresh Nyström preconditioner.

    Args:
      cfg: `vmc.config.OptimConfig` (damping λ > 0, cg_maxiter, cg_tol, nystrom_rank ℓ).
      log_psi: (params, x) -> (sign, logabs).
      walkers: (n_w, n_electrons, 3) bohr; mask: (n_w,) bool or None (all walkers count).
      b: (p,) float64, ĝ = Cov(E_L, O) in ravel order; d_kfac: (p,) float64, M⁻¹ĝ.
      count: () int32, the update count (folded into the sketch's key).
    Returns:
      (d (p,) float64, dᵀ(F + λI)d, PCG iterations () float64 (the sketch's ℓ products and
      the one for α not counted), relative residual ‖ĝ − (F + λI)d‖/‖ĝ‖).
    """
    op = linearize_fisher(log_psi, params, walkers, cfg.damping, mask)
    p = b.shape[0]
    basis, eigenvalues = fresh_sketch(op, cfg.damping, count, p, sketch_rank(cfg, p))
    a_d = op.matvec(d_kfac)            # (F + λI) d_K: α's curvature and, scaled, r₀'s product
    curv = jnp.dot(d_kfac, a_d)
    alpha = jnp.where(curv > 0, jnp.dot(b, d_kfac) / jnp.where(curv > 0, curv, 1.0), 0.0)
    res = pcg(op.matvec, b, alpha * d_kfac, cfg.cg_maxiter, cfg.cg_tol,
              nystrom_preconditioner(basis, eigenvalues, cfg.damping), ax0=alpha * a_d)
    return res.x, op.curvature(res.x), res.iterations.astype(F64), res.residual
