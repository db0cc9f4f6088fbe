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

from vmc.optim.schedules import damping_schedule, lr_schedule  # noqa: F401 (re-exported)

F64 = jnp.float64


class OptStats(NamedTuple):
    """Per-step optimizer diagnostics (scalars)."""
    lr: jax.Array
    update_norm: jax.Array        # |Δθ|₂ of the applied step
    constraint_scale: jax.Array   # s of the norm constraint (1 when inactive)
    clip_fraction: jax.Array      # fraction of walkers whose E_L was clipped
    iterations: jax.Array         # solver iterations (CG); 0 for direct solves
    residual: jax.Array           # relative residual of the solve (CG); 0 for direct solves
    # kfac/kfac-cg with optim.kfac_centring != none: layers whose centring fell back to the
    # uncentred block this update (0 otherwise)
    fallbacks: Any = 0.0
    # optim.kfac_cosines: cosines to the exact SR direction (F + λI)⁻¹ĝ of the update's own
    # batch of the uncentred KFAC, centred KFAC and applied (before the norm constraint)
    # directions; NaN when not measured
    cosine_uncentred: Any = float("nan")
    cosine_centred: Any = float("nan")
    cosine_applied: Any = float("nan")
    # λ of F + λI this update (optim.damping or its schedule): sample, dense, cg, nystrom-cg,
    # kfac-cg; NaN for kfac, adam, spring
    damping: Any = float("nan")


class Optimizer(NamedTuple):
    """`init(params) -> state`; `update(params, state, walkers, e_l, step, mask=None) ->
    (params, state, OptStats)` with walkers (n_w, n_electrons, 3) bohr, e_l (n_w,) hartree
    and mask (n_w,) bool: False marks a walker left out of the energy, the gradient and the
    SR matrix (its e_l must be finite, e.g. 0, and its configuration one where log|ψ| is
    finite; vmc.train replaces a bad walker's configuration before calling update)."""
    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any, OptStats]]


def _mask_or_all(e_l, mask):
    return jnp.ones(e_l.shape, bool) if mask is None else mask


def masked_mean(v, mask):
    """Mean of v (n_w, ...) over the walkers where mask (n_w,) is True (0 if none are)."""
    m = mask.astype(v.dtype).reshape(mask.shape + (1,) * (v.ndim - 1))
    n = jnp.maximum(jnp.sum(mask), 1).astype(v.dtype)
    return jnp.sum(jnp.where(m > 0, v, 0.0), axis=0) / n


def masked_median(v, mask):
    """Median of v (n_w,) over the walkers where mask is True (NaN if none are)."""
    return jnp.nanmedian(jnp.where(mask, v, jnp.nan))


def clip_local_energy(e_l, clip: float | None, mask=None):
    """Clip E_L to median ± clip·mean|E_L − median| (FermiNet's rule), for the gradient only.

    Median and mean absolute deviation are taken over the good walkers only (mask), so one
    non-finite walker cannot make every clipped energy NaN.

    Args:
      e_l: (n_w,) local energies, hartree. clip: width in mean absolute deviations, or None.
      mask: (n_w,) bool, the walkers that count (None: all).
    Returns:
      (clipped (n_w,), fraction of good walkers clipped ()).
    """
    mask = _mask_or_all(e_l, mask)
    if clip is None:
        return e_l, jnp.zeros((), e_l.dtype)
    median = masked_median(e_l, mask)
    width = clip * masked_mean(jnp.abs(e_l - median), mask)
    clipped = jnp.where(mask, jnp.clip(e_l, median - width, median + width), e_l)
    return clipped, masked_mean((clipped != e_l).astype(e_l.dtype), mask)


def centred_energies(e_l, mask=None):
    """ε = m (E_L − mean E_L)/√n_good (n_w,), the mean over the good walkers (mask; None: all);
    exactly 0 for the others."""
    mask = _mask_or_all(e_l, mask)
    n = jnp.sum(mask).astype(e_l.dtype)
    e = jnp.where(mask, e_l, 0.0)
    return jnp.where(mask, e - masked_mean(e, mask), 0.0) / jnp.sqrt(jnp.maximum(n, 1.0))


def n_good(mask, n_w: int):
    """Number of good walkers as a float64 scalar (n_w when mask is None)."""
    if mask is None:
        return jnp.asarray(n_w, F64)
    return jnp.maximum(jnp.sum(mask), 1).astype(F64)


def make_logabs_batch(log_psi: Callable) -> Callable:
    """(params, walkers (n_w, n, 3)) -> log|ψ| (n_w,)."""
    return jax.vmap(lambda p, x: log_psi(p, x)[1], in_axes=(None, 0))


def energy_gradient(log_psi: Callable, params, walkers, eps, mask=None):
    """ĝ = Ōᵀε = Cov(E_L, O) as a params pytree, by one vjp over the batch.

    Args:
      eps: (n_w,) centred energies ε (any float dtype; cast to the params' dtype), 0 for the
        walkers left out; mask: (n_w,) bool good walkers (None: all).
    """
    logabs = make_logabs_batch(log_psi)
    _, vjp = jax.vjp(lambda p: logabs(p, walkers), params)
    leaves = jax.tree_util.tree_leaves(params)
    dtype = leaves[0].dtype if leaves else eps.dtype
    (g,) = vjp((eps / jnp.sqrt(n_good(mask, eps.shape[0]))).astype(dtype))
    return g


def centred_jacobian(log_psi: Callable, params, walkers, mask=None):
    """Ō = m (O − mean O)/√n_good as a dense (n_w, p) matrix (rows of walkers left out by
    mask are 0; the mean is over the good ones), and the unravel function.

    Memory O(n_w p): use the matrix-free solvers for large networks.
    """
    flat, unravel = ravel_pytree(params)

    def logabs_flat(theta, x):
        return log_psi(unravel(theta), x)[1]

    o = jax.vmap(jax.grad(logabs_flat), in_axes=(None, 0))(flat, walkers)
    mask = jnp.ones(o.shape[:1], bool) if mask is None else mask
    o = jnp.where(mask[:, None], o, 0.0)
    o = jnp.where(mask[:, None], o - masked_mean(o, mask)[None], 0.0)
    return o / jnp.sqrt(n_good(mask, o.shape[0])).astype(o.dtype), unravel


def float64_ravel(params) -> tuple[Callable, Callable]:
    """(ravel: pytree -> (p,) float64, unravel: (p,) -> float64 pytree) in params' order."""
    tmpl = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, F64), params)
    _, unravel = ravel_pytree(tmpl)

    def ravel(tree):
        return ravel_pytree(jax.tree_util.tree_map(lambda x: x.astype(F64), tree))[0]
    return ravel, unravel


_CHUNK_ELEMENTS = 1 << 24   # float64 temporaries of the chunked products: <= 128 MiB


def jacobian_blocks(log_psi: Callable, params, walkers, chunk: int | None = None) -> list:
    """O_i = ∂log|ψ(x_i)|/∂θ (uncentred) as one (n_w, size) block per parameter leaf (ravel
    order), in the network's dtype; never concatenated or copied, so memory stays n_w p
    floats. `JacobianBlocks` applies the centring and 1/√n_w in float64.

    chunk: None: every walker at once (`vmap`); else at most `chunk` walkers of each device
    at a time (`vmc.hamiltonian.over_walkers`, `optim.jacobian_chunk`): the backward
    pass's temporaries (activations of every walker) are bounded by the chunk; the blocks
    are the same up to rounding."""
    from vmc.hamiltonian import over_walkers   # its per-device chunks, for gradients here
    one = jax.grad(lambda p, x: log_psi(p, x)[1])
    grads = over_walkers(one, chunk, jax.device_count())(params, walkers)
    return [leaf.reshape(walkers.shape[0], -1) for leaf in jax.tree_util.tree_leaves(grads)]


def finite_rows(blocks: list, n_w: int):
    """(n_w,) bool: the walkers whose every O entry (in all blocks) is finite."""
    ok = jnp.ones((n_w,), bool)
    for o in blocks:
        ok = ok & jnp.all(jnp.isfinite(o), axis=1)
    return ok


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


GRAM_ROW_BLOCKS = 4   # symmetric_gram: row blocks (one device); 1 would be o @ oᵀ


def symmetric_gram(o):
    """o oᵀ (n, n) for o (n, p), from the row blocks on and above the diagonal only:
    b(b+1)/2 of the b² block products (b = `GRAM_ROW_BLOCKS`), the rest by symmetry.
    The sample-space SR Gram in float64 costs n² p multiply-adds; this saves 1 − (b+1)/(2b)
    of them (37 % at b = 4). Each entry is the same dot product as in o @ oᵀ: N's whole
    `sample` update took 0.87× the time with identical parameters after it
    (scripts/bench_gram.py, README "Performance"). With several devices (walkers sharded
    along n) the plain product is left to XLA's partitioner."""
    n = o.shape[0]
    b = GRAM_ROW_BLOCKS if jax.device_count() == 1 else 1
    if b <= 1 or n < 2 * b:
        return o @ o.T
    edges = [round(i * n / b) for i in range(b + 1)]
    rows = [o[edges[i]:edges[i + 1]] for i in range(b)]
    grid = [[None] * b for _ in range(b)]
    for i in range(b):
        for j in range(i, b):
            grid[i][j] = rows[i] @ rows[j].T
            if j > i:
                grid[j][i] = grid[i][j].T
    return jnp.block(grid)


class JacobianBlocks(NamedTuple):
    """Products with Ō = (O − mean O)/√n_w for O given as column blocks (any float dtype),
    accumulated in float64 chunk by chunk (no float64 or centred copy of O is made). With
    C = I − 11ᵀ/n_w: ŌŌᵀ = C OOᵀ C / n_w, Ō v = C O v/√n_w, Ōᵀ y = Oᵀ C y/√n_w.

    With a mask (n_w,) bool, the walkers left out have zero rows in O (set here, so a
    non-finite row cannot leak through 0·NaN) and C = D_m(I − 1mᵀ/n_good), n_w → n_good.
    A parameter-free ansatz has no blocks: give `n_walkers` then (every product is 0)."""
    blocks: list
    mask: Any = None
    n_walkers: int | None = None

    @classmethod
    def build(cls, blocks: list, mask=None, n_walkers: int | None = None) -> "JacobianBlocks":
        """Zero the rows of the walkers left out by mask and wrap the blocks."""
        if mask is not None:
            blocks = [jnp.where(mask[:, None], o, 0.0) for o in blocks]
        return cls(list(blocks), mask, n_walkers)

    @property
    def n_w(self) -> int:
        return self.blocks[0].shape[0] if self.blocks else int(self.n_walkers)

    def _centre(self, u):
        if self.mask is None:
            return (u - jnp.mean(u, axis=0)) / jnp.sqrt(jnp.asarray(self.n_w, F64))
        m = self.mask.reshape(self.mask.shape + (1,) * (u.ndim - 1))
        n = n_good(self.mask, self.n_w)
        mean = jnp.sum(jnp.where(m, u, 0.0), axis=0) / n
        return jnp.where(m, u - mean, 0.0) / jnp.sqrt(n)

    def gram(self):
        """ŌŌᵀ (n_w, n_w) float64 (`symmetric_gram` per column chunk)."""
        t = jnp.zeros((self.n_w, self.n_w), F64)
        for o in self.blocks:
            # m is 0/1 per column, so (o m) oᵀ = (o m)(o m)ᵀ
            t = _chunked(o, lambda acc, oc, s, m: acc + symmetric_gram(oc * m), t)
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
        if not self.blocks:
            return jnp.zeros((0,), F64)
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
    lam_at = damping_schedule(cfg.damping, cfg.damping_decay_steps, cfg.damping_min)

    def init(params):
        return ()

    def sample_direction(params, walkers, e_l, mask, lam):
        blocks = jacobian_blocks(log_psi, params, walkers, cfg.jacobian_chunk)
        if mask is not None:   # a walker with a non-finite O is left out too
            mask = mask & finite_rows(blocks, walkers.shape[0])
        e_clip, frac = clip_local_energy(e_l, cfg.clip, mask)
        eps = centred_energies(e_clip.astype(F64), mask)
        o = JacobianBlocks.build(blocks, mask, walkers.shape[0])
        gram = o.gram()
        t = gram + lam * jnp.eye(o.n_w, dtype=F64)
        y = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(t, lower=True), eps)
        _, unravel = float64_ravel(params)
        return unravel(o.rmatvec(y)), eps @ (gram @ y), frac

    def dense_direction_tree(params, walkers, e_l, mask, lam):
        e_clip, frac = clip_local_energy(e_l, cfg.clip, mask)
        eps = centred_energies(e_clip.astype(F64), mask)
        obar, unravel = centred_jacobian(log_psi, params, walkers, mask)
        d = dense_direction(obar, eps, lam)
        g = obar.astype(F64).T @ eps
        return unravel(d.astype(obar.dtype)), g @ d, frac

    direction = {"sample": sample_direction, "dense": dense_direction_tree}[kind]

    def update(params, state, walkers, e_l, step, mask=None):
        lam = lam_at(step)
        d, g_dot_d, frac = direction(params, walkers, e_l, mask, lam)
        lr = schedule(step)
        scale = norm_constraint_scale(g_dot_d, lr, cfg.norm_constraint)
        new, norm = apply_direction(params, d, lr, scale)
        zero = jnp.zeros((), F64)
        return new, state, OptStats(lr, norm, scale, frac, zero, zero, damping=lam)

    return Optimizer(init, update)
