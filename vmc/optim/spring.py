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
from vmc.optim.cg import float64_ravel
from vmc.optim.sr import (Optimizer, OptStats, apply_direction, centred_energies,
                          clip_local_energy, lr_schedule, norm_constraint_scale)

F64 = jnp.float64


class SpringState(NamedTuple):
    """phi: (p,) float64, the last direction φ_{k−1} (ravel_pytree order of the params)."""
    phi: jax.Array


_CHUNK_ELEMENTS = 1 << 24   # float64 temporaries of the chunked products: <= 128 MiB


def jacobian_blocks(log_psi: Callable, params, walkers) -> list:
    """O_i = ∂log|ψ(x_i)|/∂θ (uncentred) as one (n_w, size) block per parameter leaf (ravel
    order), in the network's dtype; never concatenated or copied, so memory stays n_w p
    floats. `_Blocks` applies the centring and 1/√n_w in float64."""
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


class _Blocks(NamedTuple):
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


def spring_direction(o, eps, phi_prev, damping: float, mu: float):
    """φ = μ φ_prev + Ōᵀ(ŌŌᵀ + λI)⁻¹(ε − μ Ō φ_prev), float64 (products accumulated in
    float64, Cholesky solve in float64).

    Args:
      o: (n_w, p) Jacobian O of log|ψ| (uncentred; the centring is applied here), or a list
        of its column blocks (any float dtype); eps: (n_w,) centred energies / √n_w;
        phi_prev: (p,); damping: λ > 0; mu: μ in [0, 1).
    Returns:
      (φ (p,) float64, Ōφ (n_w,) float64).
    """
    o = _Blocks(list(o) if isinstance(o, (list, tuple)) else [o])
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

    def update(params, state, walkers, e_l, step):
        e_clip, frac = clip_local_energy(e_l, cfg.clip)
        eps = centred_energies(e_clip.astype(F64))
        blocks = jacobian_blocks(log_psi, params, walkers)
        phi, o_phi = spring_direction(blocks, eps, state.phi, cfg.damping, cfg.spring_mu)
        curvature = jnp.dot(o_phi, o_phi) + cfg.damping * jnp.dot(phi, phi)
        lr = schedule(step)
        scale = norm_constraint_scale(curvature, lr, cfg.norm_constraint)
        _, unravel = float64_ravel(params)
        new, norm = apply_direction(params, unravel(phi), lr, scale)
        zero = jnp.zeros((), F64)
        return new, SpringState(phi), OptStats(lr, norm, scale, frac, zero, zero)

    return Optimizer(init, update)
