"""SR by CG on the exact damped F, preconditioned by a randomized Nyström sketch of F's top
eigenspace (`nystrom-cg`; Frangella, Tropp, Udell, "Randomized Nyström preconditioning",
SIAM J. Matrix Anal. Appl. 44 (2023); MATH.md §7).

Why it converges. With n_w walkers F = ŌᵀŌ has rank ≤ n_w − 1, so F + λI has p − n_w + 1
eigenvalues equal to λ: one cluster, which plain CG resolves in one step, plus ≤ n_w − 1
large, spread eigenvalues, which cost CG its iterations. With (U, Λ̂) an approximate top-ℓ
eigendecomposition of F (U: p × ℓ orthonormal, λ̂₁ ≥ … ≥ λ̂_ℓ ≥ 0),

    P⁻¹ = U diag((λ̂_ℓ + λ)/(λ̂_i + λ)) Uᵀ + (I − UUᵀ)

maps the captured eigenvalues onto λ̂_ℓ + λ and is the identity on the complement, so the
λ-cluster stays a cluster: for an exact sketch the spectrum of P⁻¹(F + λI) is
{λ̂_ℓ + λ} ∪ {λ_i + λ: i > ℓ}, with condition number (λ_{ℓ+1} + λ)/λ instead of
(λ₁ + λ)/λ. With ℓ = rank F two distinct eigenvalues remain (two iterations); with
ℓ > rank F, λ̂_ℓ = 0 and it is λI on everything (one). A sketch
of earlier parameters/walkers is still an SPD preconditioner (PCG stays exact); it only
captures less of the current spectrum.

The sketch (Tropp, Yurtsever, Udell, Cevher, SIAM J. Matrix Anal. Appl. 38 (2017), Alg. 3;
FTU 2023 Alg. 2.1), all in float64: Q = orth(Ω) for a Gaussian Ω (p × ℓ); Y = F Q (ℓ
products F·v, batched jvp/vjp of the linearized network); shift ν = √p·eps·‖Y‖_F,
Y_ν = Y + νQ; C = chol(QᵀY_ν); B = Y_ν C⁻ᵀ; BᵀB = W Σ² Wᵀ (the small ℓ × ℓ
eigendecomposition); U = B W Σ⁻¹, λ̂ = max(Σ² − ν, 0). Then F ≈ U Λ̂ Uᵀ is the Nyström
approximation (FQ)(QᵀFQ)⁺(FQ)ᵀ.

Reuse: the sketch (U, λ̂) lives in `NystromState` (checkpointed with the rest of the state,
so a resumed run is bit-identical) and is rebuilt when it is `optim.nystrom_refresh_every`
updates old or when the previous solve needed more than `optim.nystrom_refresh_iters` CG
iterations. The random Ω is drawn from a fixed key folded with the update count. Measured
(README, scripts/bench_pcg.py): a sketch of an earlier batch preconditions about as well as
nothing (He, ℓ = 64, λ = 1e-3: 7 iterations fresh, 51–98 from 1–20 steps old, 84 plain),
because beyond the first few, F's top eigenvectors belong to the batch's walkers, which the
sampler replaces every step; the stale directions then fall into the new λ-cluster and split
it. Hence the default k = 1, and ℓ = 16: on CPU the sketch's p ℓ² linear algebra and
batched products grow faster than ℓ, and ℓ = 16 gave the fastest update (about half a `cg`
update on He); larger ℓ cut iterations further.

CG (warm-started from the previous direction), the norm constraint on dᵀ(F + λI)d and the
learning-rate schedule are `vmc.optim.cg`'s. Convention: ĝ = Cov(E_L, O) = g/2 (FermiNet's).
The network may run in float32: each product then carries float32 rounding; Ω, Y, the
CholeskyQR, the Cholesky of the core and the small eigendecomposition of the sketch,
P⁻¹ and the CG scalars are float64.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from vmc.errors import InputError
from vmc.optim.cg import FisherOperator, cg_solve_and_step, cg_system, flat_size
from vmc.optim.sr import Optimizer, damping_schedule, lr_schedule

F64 = jnp.float64
_SKETCH_KEY = 0x5EED16      # Ω_t = N(0, 1) from fold_in(PRNGKey(_SKETCH_KEY), t)
_SKETCH_BATCH = 16         # columns of Ω per batched jvp/vjp (memory: 16 tangents at once)


class NystromState(NamedTuple):
    """count: () int32, updates done; age: () int32, updates since the sketch was built
    (at the update that builds it: 0); last_iterations: () int32, the previous solve's CG
    iterations; basis: (p, ℓ) float64, U; eigenvalues: (ℓ,) float64, λ̂ (descending);
    direction: (p,) float64, the last d (the next solve's warm start). All in ravel order."""
    count: jax.Array
    age: jax.Array
    last_iterations: jax.Array
    basis: jax.Array
    eigenvalues: jax.Array
    direction: jax.Array


def fisher_block(op: FisherOperator, damping: float) -> Callable:
    """Ω (p, ℓ) float64 -> F Ω (p, ℓ) float64 (undamped), by batched products of `op`
    (`_SKETCH_BATCH` columns per batched jvp/vjp; `op.matvec` is F + λI, λ = `damping`)."""
    def block(omega):
        cols = jax.lax.map(op.matvec, omega.T, batch_size=_SKETCH_BATCH)
        return cols.T - damping * omega
    return block


def _cholesky_qr(a, keep=None):
    """a R⁻¹ with RᵀR = aᵀa (CholeskyQR, float64): orthonormal columns for a well-conditioned
    a (p, ℓ) at the cost of one ℓ × ℓ Cholesky and two p ℓ² matrix products (a tall
    Householder QR is ~100× slower on CPU here). Columns outside keep (ℓ,) bool are
    returned as 0."""
    g = a.T @ a
    if keep is not None:
        both = keep[:, None] & keep[None, :]
        g = jnp.where(both, g, jnp.eye(g.shape[0], dtype=g.dtype))
        a = jnp.where(keep[None, :], a, 0.0)
    return a @ _triangular_inverse(jnp.linalg.cholesky(0.5 * (g + g.T))).T


def _triangular_inverse(chol):
    """L⁻¹ (ℓ, ℓ) of a lower-triangular L: one small triangular solve, so that the tall
    products are plain matrix products (XLA's CPU triangular solve with p right-hand sides is
    ~10× slower than a p × ℓ × ℓ matmul)."""
    return jax.scipy.linalg.solve_triangular(chol, jnp.eye(chol.shape[0], dtype=chol.dtype),
                                             lower=True)


_RELATIVE_FLOOR = 1e-10   # Ritz values below this × the largest are dropped (U column 0)


def nystrom_sketch(block: Callable, omega):
    """Randomized Nyström approximation F ≈ U diag(λ̂) Uᵀ of an SPSD F from ℓ products.

    Tropp et al. 2017 Alg. 3 / Frangella–Tropp–Udell 2023 Alg. 2.1, float64: Q = orth(Ω)
    (CholeskyQR), Y = F Q, ν = √p·eps·‖Y‖_F, Y_ν = Y + νQ, C = chol(QᵀY_ν) (the sketch
    core), B = Y_ν C⁻ᵀ; the small eigendecomposition BᵀB = W Σ² Wᵀ gives U = B W Σ⁻¹ and
    λ̂ = max(Σ² − ν, 0). Directions with Σ² ≤ 1e-10 Σ²_max (where BWΣ⁻¹ loses
    orthogonality; F has rank < ℓ there) get λ̂ = 0 and a zero column; the others are
    re-orthonormalized (CholeskyQR), so P⁻¹ built from (U, λ̂) is SPD.

    Args:
      block: Ω (p, ℓ) -> F Ω (p, ℓ); omega: (p, ℓ) test matrix (Gaussian), ℓ ≤ p.
    Returns:
      (U (p, ℓ) float64, orthonormal or zero columns; λ̂ (ℓ,) float64 ≥ 0 descending).
    """
    q = _cholesky_qr(omega.astype(F64))    # Gaussian Ω: κ ≈ 1 + 2√(ℓ/p), one pass suffices
    y = block(q).astype(F64)
    nu = jnp.sqrt(jnp.asarray(q.shape[0], F64)) * jnp.finfo(F64).eps * jnp.linalg.norm(y)
    nu = jnp.maximum(nu, jnp.finfo(F64).tiny)
    y_nu = y + nu * q
    core = q.T @ y_nu
    chol = jnp.linalg.cholesky(0.5 * (core + core.T))
    b = y_nu @ _triangular_inverse(chol).T                                # Y_ν C⁻ᵀ
    gram = b.T @ b
    sigma2, w = jnp.linalg.eigh(0.5 * (gram + gram.T))
    sigma2, w = sigma2[::-1], w[:, ::-1]
    keep = sigma2 > _RELATIVE_FLOOR * sigma2[0]
    u = b @ (w / jnp.sqrt(jnp.where(keep, sigma2, 1.0)))
    lam = jnp.where(keep, jnp.maximum(sigma2 - nu, 0.0), 0.0)
    return _cholesky_qr(u, keep), lam


def eigenpairs_from_jacobian(obar, ell: int):
    """The exact top-ℓ eigenpairs of F = ŌᵀŌ from the SVD of Ō (n_w, p), float64.

    Returns (U (p, ℓ), λ (ℓ,) descending); ℓ ≤ min(n_w, p) (raises ValueError otherwise).
    For benchmarks and tests: it forms Ō.
    """
    o = jnp.asarray(obar, F64)
    if ell > min(o.shape):
        raise ValueError(f"ell = {ell} exceeds min(n_w, p) = {min(o.shape)}")
    _, s, vt = jnp.linalg.svd(o, full_matrices=False)
    return vt[:ell].T, (s ** 2)[:ell]


def nystrom_preconditioner(basis, eigenvalues, damping: float) -> Callable:
    """r (p,) -> P⁻¹ r = U diag((λ̂_ℓ + λ)/(λ̂_i + λ)) Uᵀ r + (I − UUᵀ) r, float64 (FTU 2023
    eq. 5.3). SPD for λ > 0; U = 0 gives the identity. basis (p, ℓ), eigenvalues (ℓ,)
    descending, damping λ > 0."""
    u = basis.astype(F64)
    lam = eigenvalues.astype(F64)
    factor = (lam[-1] + damping) / (lam + damping) - 1.0

    def apply(r):
        return r + u @ (factor * (u.T @ r))
    return apply


def fresh_sketch(op: FisherOperator, damping: float, count, p: int, ell: int):
    """(U (p, ℓ), λ̂ (ℓ,)) of this batch's F from Ω_t = N(0, 1) drawn from
    fold_in(PRNGKey(_SKETCH_KEY), count): the same Ω for the same update count, so a resumed
    run rebuilds the same sketch. `op`: F + λI with λ = damping."""
    key = jax.random.fold_in(jax.random.PRNGKey(_SKETCH_KEY), count)
    omega = jax.random.normal(key, (p, ell), F64)
    return nystrom_sketch(fisher_block(op, damping), omega)


def sketch_rank(cfg, p: int) -> int:
    """ℓ = `optim.nystrom_rank` clamped to [1, p]."""
    return max(1, min(int(cfg.nystrom_rank), p))


def make_nystrom_cg(cfg, log_psi: Callable) -> Optimizer:
    """SR with Nyström-preconditioned CG on the exact damped F (module docstring).

    Args:
      cfg: `vmc.config.OptimConfig` (lr, lr_decay_steps, damping > 0, norm_constraint, clip,
        cg_maxiter, cg_tol, nystrom_rank ℓ (clamped to p), nystrom_refresh_every k,
        nystrom_refresh_iters).
    Stats: iterations = PCG iterations of the solve (the ℓ sketch products not included),
      residual = ‖ĝ − (F + λI)d‖/‖ĝ‖.
    Raises:
      InputError: damping <= 0 (P⁻¹ needs λ̂_ℓ + λ > 0).
    """
    if not cfg.damping > 0:
        raise InputError(f"optim.damping: {cfg.damping} is not valid for nystrom-cg; "
                         f"valid: > 0")
    schedule = lr_schedule(cfg.lr, cfg.lr_decay_steps)
    lam_at = damping_schedule(cfg.damping, cfg.damping_decay_steps, cfg.damping_min)

    def init(params):
        p = flat_size(params)
        ell = sketch_rank(cfg, p)
        zero = jnp.zeros((), jnp.int32)
        return NystromState(zero, zero, zero, jnp.zeros((p, ell), F64),
                            jnp.zeros((ell,), F64), jnp.zeros((p,), F64))

    def update(params, state, walkers, e_l, step, mask=None):
        damping = lam_at(step)
        op, g, frac = cg_system(cfg, log_psi, params, walkers, e_l, mask, damping)
        refresh = ((state.count == 0) | (state.age + 1 >= cfg.nystrom_refresh_every)
                   | (state.last_iterations > cfg.nystrom_refresh_iters))

        def fresh():
            u, lam = fresh_sketch(op, damping, state.count, *state.basis.shape)
            return u, lam, jnp.zeros((), jnp.int32)

        def kept():
            return state.basis, state.eigenvalues, state.age + 1

        basis, lam, age = jax.lax.cond(refresh, fresh, kept)
        precond = nystrom_preconditioner(basis, lam, damping)
        new, res, stats = cg_solve_and_step(cfg, schedule, op, g, state.direction, params,
                                            step, frac, precond)
        return new, NystromState(state.count + 1, age, res.iterations, basis, lam,
                                 res.x), stats

    return Optimizer(init, update)
