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

F64 = jnp.float64


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


def float64_ravel(params) -> tuple[Callable, Callable]:
    """(ravel: pytree -> (p,) float64, unravel: (p,) -> float64 pytree) in params' order."""
    tmpl = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, F64), params)
    _, unravel = ravel_pytree(tmpl)

    def ravel(tree):
        return ravel_pytree(jax.tree_util.tree_map(lambda x: x.astype(F64), tree))[0]
    return ravel, unravel


_CHUNK_ELEMENTS = 1 << 24   # float64 temporaries of the chunked products: <= 128 MiB


def jacobian_blocks(log_psi: Callable, params, walkers) -> list:
    """O_i = ∂log|ψ(x_i)|/∂θ (uncentred) as one (n_w, size) block per parameter leaf (ravel
    order), in the network's dtype; never concatenated or copied, so memory stays n_w p
    floats. `JacobianBlocks` applies the centring and 1/√n_w in float64."""
    grads = jax.vmap(jax.grad(lambda p, x: log_psi(p, x)[1]), in_axes=(None, 0))(params, walkers)
    return [leaf.reshape(walkers.shape[0], -1) for leaf in jax.tree_util.tree_leaves(grads)]


def _chunked(o, fn, init):
    """Fold fn(carry, chunk float64 (n_w, w), start, fresh (w,) bool) over column chunks of
    o (n_w, p); the last chunk overlaps its predecessor and `fresh` masks the repeats."""
    n_w, p = o.shape
    if o.dtype == F64 or n_w * p <= _CHUNK_ELEMENTS:
        return fn(init, o.astype(F64), 0, jnp.ones((p,), bool))
    width = max(1, _CHUNK_ELEMENTS // n_w)
    cols = jnp.arange(width)

    def body(carry, k):
        start = jnp.minimum(k * width, p - width)
        oc = jax.lax.dynamic_slice_in_dim(o, start, width, axis=1).astype(F64)
        return fn(carry, oc, start, (start + cols) >= k * width), None

    return jax.lax.scan(body, init, jnp.arange(-(-p // width)))[0]


class JacobianBlocks(NamedTuple):
    """Products with Ō = (O − mean O)/√n_w for O given as column blocks (any float dtype),
    accumulated in float64 chunk by chunk (no float64 or centred copy of O is made). With
    C = I − 11ᵀ/n_w: ŌŌᵀ = C OOᵀ C / n_w, Ō v = C O v/√n_w, Ōᵀ y = Oᵀ C y/√n_w."""
    blocks: list

    @property
    def n_w(self) -> int:
        return self.blocks[0].shape[0]

    def _centre(self, u):
        return (u - jnp.mean(u, axis=0)) / jnp.sqrt(jnp.asarray(self.n_w, F64))

    def gram(self):
        """ŌŌᵀ (n_w, n_w) float64."""
        t = jnp.zeros((self.n_w, self.n_w), F64)
        for o in self.blocks:
            t = _chunked(o, lambda acc, oc, s, m: acc + (oc * m) @ oc.T, t)
        t = self._centre(self._centre(t).T)
        return 0.5 * (t + t.T)

    def matvec(self, v):
        """Ō v (n_w,) float64 for v (p,) float64."""
        out, offset = jnp.zeros((self.n_w,), F64), 0
        for o in self.blocks:
            vb = v[offset:offset + o.shape[1]]

            def fn(acc, oc, s, m, vb=vb):
                vc = jax.lax.dynamic_slice_in_dim(vb, s, oc.shape[1])
                return acc + oc @ jnp.where(m, vc, 0.0)
            out, offset = _chunked(o, fn, out), offset + o.shape[1]
        return self._centre(out)

    def rmatvec(self, y):
        """Ōᵀ y (p,) float64 for y (n_w,)."""
        w = self._centre(y.astype(F64))

        def fn(out, oc, s, m):
            return jax.lax.dynamic_update_slice_in_dim(out, oc.T @ w, s, axis=0)
        return jnp.concatenate([_chunked(o, fn, jnp.zeros((o.shape[1],), F64))
                                for o in self.blocks])


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

    'sample' forms O per parameter leaf in the network's dtype and accumulates ŌŌᵀ, Ōᵀy in
    float64 (`JacobianBlocks`): memory O(n_w p), no float64 copy of Ō; then
    d = Ōᵀ(ŌŌᵀ + λI)⁻¹ε and ĝᵀd = εᵀŌŌᵀy with no further pass over Ō. 'dense' assembles the
    p × p F (p ≲ 10⁴).

    Args:
      cfg: `vmc.config.OptimConfig` (lr, lr_decay_steps, damping, norm_constraint, clip).
    """
    schedule = lr_schedule(cfg.lr, cfg.lr_decay_steps)

    def init(params):
        return ()

    def sample_direction(params, walkers, eps):
        o = JacobianBlocks(jacobian_blocks(log_psi, params, walkers))
        gram = o.gram()
        t = gram + cfg.damping * jnp.eye(o.n_w, dtype=F64)
        y = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(t, lower=True), eps)
        _, unravel = float64_ravel(params)
        return unravel(o.rmatvec(y)), eps @ (gram @ y)

    def dense_direction_tree(params, walkers, eps):
        obar, unravel = centred_jacobian(log_psi, params, walkers)
        d = dense_direction(obar, eps, cfg.damping)
        g = obar.astype(F64).T @ eps
        return unravel(d.astype(obar.dtype)), g @ d

    direction = {"sample": sample_direction, "dense": dense_direction_tree}[kind]

    def update(params, state, walkers, e_l, step):
        e_clip, frac = clip_local_energy(e_l, cfg.clip)
        eps = centred_energies(e_clip.astype(F64))
        d, g_dot_d = direction(params, walkers, eps)
        lr = schedule(step)
        scale = norm_constraint_scale(g_dot_d, lr, cfg.norm_constraint)
        new, norm = apply_direction(params, d, lr, scale)
        zero = jnp.zeros((), F64)
        return new, state, OptStats(lr, norm, scale, frac, zero, zero)

    return Optimizer(init, update)
