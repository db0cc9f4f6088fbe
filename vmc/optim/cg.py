"""Matrix-free SR: (preconditioned) conjugate gradients on (F + λI) d = ĝ (MATH.md §3).

F v = Ōᵀ(Ō v) costs one jvp and one vjp of the batch of per-walker log|ψ| (Schraudolph
2002); Ō (n_w × p) is never formed. The forward pass is linearized once per step and every
CG iteration reuses it. Vectors and CG scalars are float64 (the network may run in
float32: each product then carries float32 rounding, ~1e-7 relative).

Convention (FermiNet's, as in `vmc.optim.sr`): ĝ = Ōᵀε = Cov(E_L, O) = g/2, θ ← θ − η s d,
with the norm constraint s = min(1, √(C / (η² dᵀ(F + λI)d))) on the exact curvature of the
solver's direction (for an exact solve dᵀ(F + λI)d = ĝᵀd; for a truncated CG it is the
trust-region quantity, costing one extra jvp).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vmc.optim.sr import (Optimizer, OptStats, apply_direction, centred_energies,
                          clip_local_energy, damping_schedule, float64_ravel, lr_schedule,
                          make_logabs_batch, n_good, norm_constraint_scale)

F64 = jnp.float64


class FisherOperator(NamedTuple):
    """The damped Fisher matrix of one batch, matrix-free, on flat float64 (p,) vectors.

    matvec: v -> (F + λI) v.  gradient: ε (n_w,) -> ĝ = Ōᵀε.  curvature: d -> dᵀ(F + λI)d
    (one jvp).  unravel: flat (p,) -> params-shaped float64 pytree.  ravel: pytree -> (p,)
    float64.  damping: λ.
    """
    matvec: Callable
    gradient: Callable
    curvature: Callable
    unravel: Callable
    ravel: Callable
    damping: Any = 0.0


def flat_size(params) -> int:
    """Number of scalar parameters p."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def linearize_fisher(log_psi: Callable, params, walkers, damping: float,
                     mask=None) -> FisherOperator:
    """Linearize the batch of log|ψ| once and return F + λI as products.

    Args:
      log_psi: (params, x (n_electrons, 3)) -> (sign, logabs).
      walkers: (n_w, n_electrons, 3) bohr.
      damping: λ >= 0.
      mask: (n_w,) bool, the walkers that count (None: all); the others get weight 0 in
        both products (their configurations must have finite log|ψ|).
    """
    logabs = make_logabs_batch(log_psi)
    out, jvp = jax.linearize(lambda p: logabs(p, walkers), params)
    vjp = jax.linear_transpose(jvp, params)
    n_w = walkers.shape[0]
    mask = jnp.ones((n_w,), bool) if mask is None else mask
    n = n_good(mask, n_w)
    root_n = jnp.sqrt(n)
    ravel, unravel = float64_ravel(params)

    def centre(u):
        return jnp.where(mask, u - jnp.sum(jnp.where(mask, u, 0.0)) / n, 0.0) / root_n

    def to_params(v):
        tree = unravel(v)
        return jax.tree_util.tree_map(lambda t, p: t.astype(p.dtype), tree, params)

    def obar(v):
        """Ō v, (n_w,) float64: centred per-walker directional derivatives / √n_w."""
        return centre(jvp(to_params(v)).astype(F64))

    def obar_t(w):
        """Ōᵀ w = Oᵀ C w/√n_w for w (n_w,), C the masked centring."""
        (t,) = vjp(centre(w).astype(out.dtype))
        return ravel(t)

    def matvec(v):
        return obar_t(obar(v)) + damping * v

    def curvature(d):
        u = obar(d)
        return jnp.dot(u, u) + damping * jnp.dot(d, d)

    return FisherOperator(matvec, lambda eps: obar_t(eps.astype(F64)), curvature, unravel,
                          ravel, damping)


class CGResult(NamedTuple):
    """x: (p,) float64 solution; iterations: () int32; residual: () float64, ‖b − Ax‖/‖b‖
    (the recursively updated residual)."""
    x: jax.Array
    iterations: jax.Array
    residual: jax.Array


def pcg(matvec: Callable, b, x0, maxiter: int, tol: float,
        precond: Optional[Callable] = None, ax0=None) -> CGResult:
    """Preconditioned conjugate gradients for SPD A, jittable (lax.while_loop), float64.

    Stops when ‖r‖ ≤ tol ‖b‖ or after `maxiter` iterations (0: return x0). `precond` applies
    M⁻¹ (SPD); None is the identity (plain CG). `ax0`: A x₀ when the caller has it (saves
    the product for the initial residual); None: computed here.
    """
    precond = precond if precond is not None else (lambda r: r)
    b = b.astype(F64)
    x0 = x0.astype(F64)
    bnorm = jnp.maximum(jnp.linalg.norm(b), jnp.finfo(F64).tiny)
    r0 = b - (matvec(x0) if ax0 is None else ax0.astype(F64))
    z0 = precond(r0)
    rz0 = jnp.dot(r0, z0)

    def cond(c):
        k, _, r, _, rz = c
        return (k < maxiter) & (jnp.linalg.norm(r) > tol * bnorm) & (rz > 0)

    def body(c):
        k, x, r, p, rz = c
        ap = matvec(p)
        pap = jnp.dot(p, ap)
        alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = jnp.dot(r, z)
        p = z + (rz_new / rz) * p
        return k + 1, x, r, p, rz_new

    k, x, r, _, _ = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), x0, r0, z0, rz0))
    return CGResult(x, k, jnp.linalg.norm(r) / bnorm)


class CGState(NamedTuple):
    """direction: (p,) float64, the last solution d (the next solve's warm start)."""
    direction: jax.Array


def cg_system(cfg, log_psi: Callable, params, walkers, e_l, mask=None, damping=None):
    """The clipped, centred SR system of one batch: (F + λI as a `FisherOperator`, ĝ (p,)
    float64, clip fraction ()). Shared by every solver that runs CG on the exact F.

    Args:
      cfg: `vmc.config.OptimConfig` (damping, clip); walkers (n_w, n_electrons, 3) bohr;
      e_l (n_w,) hartree; mask (n_w,) bool good walkers (None: all); damping: λ of this
      update (default cfg.damping; `vmc.optim.schedules.damping_schedule`).
    """
    e_clip, frac = clip_local_energy(e_l, cfg.clip, mask)
    eps = centred_energies(e_clip.astype(F64), mask)
    op = linearize_fisher(log_psi, params, walkers,
                          cfg.damping if damping is None else damping, mask)
    return op, op.gradient(eps), frac


def cg_solve_and_step(cfg, schedule: Callable, op: FisherOperator, g, x0, params, step,
                      frac, precond: Optional[Callable] = None):
    """PCG on (F + λI) d = ĝ from x0 (`optim.cg_maxiter`, `optim.cg_tol`), then the norm
    constraint on dᵀ(F + λI)d and θ ← θ − η s d. Shared by `cg` and `nystrom-cg`.

    Returns:
      (new params, `CGResult`, `OptStats`).
    """
    res = pcg(op.matvec, g, x0, cfg.cg_maxiter, cfg.cg_tol, precond)
    lr = schedule(step)
    scale = norm_constraint_scale(op.curvature(res.x), lr, cfg.norm_constraint)
    new, norm = apply_direction(params, op.unravel(res.x), lr, scale)
    return new, res, OptStats(lr, norm, scale, frac, res.iterations.astype(F64), res.residual,
                              damping=jnp.asarray(op.damping, F64))


def make_cg(cfg, log_psi: Callable) -> Optimizer:
    """SR with CG on the exact damped F, warm-started from the previous direction.

    Args:
      cfg: `vmc.config.OptimConfig` (lr, lr_decay_steps, damping, norm_constraint, clip,
        cg_maxiter, cg_tol).
    Stats: iterations = CG iterations, residual = ‖ĝ − (F + λI)d‖/‖ĝ‖.
    """
    schedule = lr_schedule(cfg.lr, cfg.lr_decay_steps)
    lam_at = damping_schedule(cfg.damping, cfg.damping_decay_steps, cfg.damping_min)

    def init(params):
        return CGState(jnp.zeros((flat_size(params),), F64))

    def update(params, state, walkers, e_l, step, mask=None):
        op, g, frac = cg_system(cfg, log_psi, params, walkers, e_l, mask, lam_at(step))
        new, res, stats = cg_solve_and_step(cfg, schedule, op, g, state.direction, params,
                                            step, frac)
        return new, CGState(res.x), stats

    return Optimizer(init, update)
