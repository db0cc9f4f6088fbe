"""Stochastic reconfiguration: the discretized L² gradient flow (MATH.md §3).

With n_w walkers, Ō = (O − mean O)/√n_w (n_w × p, O_i = ∂_θ log|ψ(x_i)|) and
ε = (E_L − mean E_L)/√n_w:

    F = ŌᵀŌ,   ĝ = Ōᵀε = Cov(E_L, O) = g/2,   d = (F + λI)⁻¹ ĝ,   θ ← θ − η s d

(FermiNet's convention: the direction solves for ĝ = g/2; η = optim.lr.) s ≤ 1 is the norm
constraint s = min(1, √(C / (η² ĝᵀd))). The shared helpers here serve every SR solver.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


class OptStats(NamedTuple):
    """Per-step optimizer diagnostics (scalars)."""
    lr: jax.Array
    update_norm: jax.Array        # |Δθ|₂ of the applied step
    constraint_scale: jax.Array   # s of the norm constraint (1 when inactive)
    clip_fraction: jax.Array      # fraction of walkers whose E_L was clipped
    iterations: jax.Array         # solver iterations (CG); 0 for direct solves
    residual: jax.Array           # relative residual of the solve (CG); 0 for direct solves


class Optimizer(NamedTuple):
    """`init(params) -> state`; `update(params, state, walkers, e_l, step) -> (params, state,
    OptStats)` with walkers (n_w, n_electrons, 3) bohr and e_l (n_w,) hartree."""
    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any, OptStats]]


def lr_schedule(lr: float, decay_steps: float) -> Callable[[jax.Array], jax.Array]:
    """η_t = η₀ / (1 + t/t₀) (FermiNet's schedule), an optax-style schedule."""
    def schedule(step):
        return lr / (1.0 + step / decay_steps)
    return schedule


def clip_local_energy(e_l, clip: float | None):
    """Clip E_L to median ± clip·mean|E_L − median| (FermiNet's rule), for the gradient only.

    Args:
      e_l: (n_w,) local energies, hartree. clip: width in mean absolute deviations, or None.
    Returns:
      (clipped (n_w,), fraction of walkers clipped ()).
    """
    if clip is None:
        return e_l, jnp.zeros((), e_l.dtype)
    median = jnp.median(e_l)
    width = clip * jnp.mean(jnp.abs(e_l - median))
    clipped = jnp.clip(e_l, median - width, median + width)
    return clipped, jnp.mean((clipped != e_l).astype(e_l.dtype))


def centred_energies(e_l):
    """ε = (E_L − mean E_L)/√n_w, (n_w,) float64-ready."""
    return (e_l - jnp.mean(e_l)) / jnp.sqrt(e_l.shape[0])


def make_logabs_batch(log_psi: Callable) -> Callable:
    """(params, walkers (n_w, n, 3)) -> log|ψ| (n_w,)."""
    return jax.vmap(lambda p, x: log_psi(p, x)[1], in_axes=(None, 0))


def energy_gradient(log_psi: Callable, params, walkers, eps):
    """ĝ = Ōᵀε = Cov(E_L, O) as a params pytree, by one vjp over the batch.

    Args:
      eps: (n_w,) centred energies ε (any float dtype; cast to the params' dtype).
    """
    logabs = make_logabs_batch(log_psi)
    _, vjp = jax.vjp(lambda p: logabs(p, walkers), params)
    leaves = jax.tree_util.tree_leaves(params)
    dtype = leaves[0].dtype if leaves else eps.dtype
    (g,) = vjp((eps / jnp.sqrt(eps.shape[0])).astype(dtype))
    return g


def centred_jacobian(log_psi: Callable, params, walkers):
    """Ō = (O − mean O)/√n_w as a dense (n_w, p) matrix, and the unravel function.

    Memory O(n_w p): use the matrix-free solvers for large networks.
    """
    flat, unravel = ravel_pytree(params)

    def logabs_flat(theta, x):
        return log_psi(unravel(theta), x)[1]

    o = jax.vmap(jax.grad(logabs_flat), in_axes=(None, 0))(flat, walkers)
    o = o - jnp.mean(o, axis=0, keepdims=True)
    return o / jnp.sqrt(o.shape[0]), unravel


def sample_space_direction(obar, eps, damping: float):
    """d = Ōᵀ(ŌŌᵀ + λI)⁻¹ε = (ŌᵀŌ + λI)⁻¹Ōᵀε, solved in float64 (minSR; Chen & Heyl 2023).

    Args:
      obar: (n_w, p); eps: (n_w,); damping: λ > 0 (ŌŌᵀ is singular: rows sum to zero).
    Returns:
      d: (p,) float64.
    """
    o = obar.astype(jnp.float64)
    t = o @ o.T + damping * jnp.eye(o.shape[0], dtype=jnp.float64)
    chol = jax.scipy.linalg.cho_factor(t, lower=True)
    y = jax.scipy.linalg.cho_solve(chol, eps.astype(jnp.float64))
    return o.T @ y


def dense_direction(obar, eps, damping: float):
    """d = (ŌᵀŌ + λI)⁻¹Ōᵀε with the p × p matrix assembled (p ≲ 10⁴), in float64."""
    o = obar.astype(jnp.float64)
    f = o.T @ o + damping * jnp.eye(o.shape[1], dtype=jnp.float64)
    chol = jax.scipy.linalg.cho_factor(f, lower=True)
    return jax.scipy.linalg.cho_solve(chol, o.T @ eps.astype(jnp.float64))


def norm_constraint_scale(g_dot_d, lr, constraint: float | None):
    """s = min(1, √(C / (η² ĝᵀd))) (FermiNet/kfac-jax's norm constraint); 1 if C is None."""
    if constraint is None:
        return jnp.ones((), jnp.float64)
    g_dot_d = jnp.maximum(jnp.asarray(g_dot_d, jnp.float64), 1e-300)
    return jnp.minimum(1.0, jnp.sqrt(constraint / (lr ** 2 * g_dot_d)))


def apply_direction(params, direction, lr, scale):
    """θ − η s d for a direction pytree shaped like params (cast to each leaf's dtype)."""
    step = lr * scale
    new = jax.tree_util.tree_map(lambda p, d: p - (step * d).astype(p.dtype), params, direction)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square((step * d).astype(jnp.float64)))
                        for d in jax.tree_util.tree_leaves(direction)))
    return new, norm


def make_direct_sr(cfg, log_psi: Callable, kind: str) -> Optimizer:
    """SR with a direct solve: kind 'sample' (n_w × n_w) or 'dense' (p × p).

    Args:
      cfg: `vmc.config.OptimConfig` (lr, lr_decay_steps, damping, norm_constraint, clip).
    """
    solve = {"sample": sample_space_direction, "dense": dense_direction}[kind]
    schedule = lr_schedule(cfg.lr, cfg.lr_decay_steps)

    def init(params):
        return ()

    def update(params, state, walkers, e_l, step):
        e_clip, frac = clip_local_energy(e_l, cfg.clip)
        eps = centred_energies(e_clip.astype(jnp.float64))
        obar, unravel = centred_jacobian(log_psi, params, walkers)
        d = solve(obar, eps, cfg.damping)
        g = obar.astype(jnp.float64).T @ eps
        lr = schedule(step)
        scale = norm_constraint_scale(g @ d, lr, cfg.norm_constraint)
        new, norm = apply_direction(params, unravel(d.astype(obar.dtype)), lr, scale)
        zero = jnp.zeros((), jnp.float64)
        return new, state, OptStats(lr, norm, scale, frac, zero, zero)

    return Optimizer(init, update)
