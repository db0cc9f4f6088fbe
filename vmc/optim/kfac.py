"""KFAC and KFAC-preconditioned CG for SR (Martens & Grosse 2015; Pfau et al. 2020; MATH.md §3).

The damped Fisher F + λI is approximated block-diagonally:

- each Dense layer (bias folded in): (A + π√λ I) ⊗ (B + √λ/π I) with the "expand" factors of
  `vmc.optim.kfac_capture` and π = √((tr A / dim A)/(tr B / dim B)) (factored Tikhonov
  damping, Martens & Grosse 2015 §6.3); a kernel W̃ = [W; bias] is preconditioned as
  (A + π√λ I)⁻¹ ∇W̃ (B + √λ/π I)⁻¹;
- every other parameter (envelope π, σ; Jastrow α): diag(ŌᵀŌ) + λ (exact centred Fisher
  diagonal);
- optionally minus the rank-1 mean term of each Dense block (below).

Centring (`optim.kfac_centring`; MATH.md §7). A, B are uncentred second moments while F is
a covariance: F's block of a Dense layer is E[vec G vec Gᵀ] − m mᵀ, G = Σ_s ã_s b_sᵀ the
per-walker layer gradient and m = vec E[G] (walker mean, `Statistics.mean`; with the
factors' 1/n_w, so the same normalisation as F = ŌᵀŌ). Issue #16 measured |m|²/tr F of
3–7 on FermiNet's orbital layers: there the mean term is most of the uncentred block, and
A ⊗ B overestimates F along m. Centred KFAC keeps A ⊗ B for the second moment and
subtracts a rank-1 mean term, M − c m mᵀ with M the damped Kronecker product, inverted by
Sherman–Morrison,

    (M − c m mᵀ)⁻¹ĝ = M⁻¹ĝ + u (uᵀĝ)/δ,   u = √c M⁻¹m = √c vec(A_λ⁻¹ Ḡ B_λ⁻¹),
    δ = 1 − c mᵀM⁻¹m.

M^{-1/2}(M − c m mᵀ)M^{-1/2} = I − w wᵀ with |w|² = 1 − δ, so M − c m mᵀ ⪰ δ M: SPD iff
δ > 0. Where δ ≤ guard (`CENTRED_GUARD`; 'fit': `FIT_GUARD`) the layer falls back to M
alone and the fall-back is counted (`OptStats.fallbacks`, per update; `KfacState.fallbacks`,
total).

The weight c. 'walker': c = 1, F's own mean term. But A ⊗ B is no upper bound on the
second moment: the expand rule keeps only the same-use terms s = s′ of E[vec G vec Gᵀ]
(and factorises them as if a and b were independent), while m mᵀ = Σ_{s,s′} of the
per-use means, every pair. If the S uses of a walker were independent draws, the cross-use
terms would be (1 − 1/S) m mᵀ, and the covariance consistent with M is
M − m mᵀ/S: 'use', c = 1/S (S = `DenseLayer.uses`). In the model A ⊗ B assumes (uses
independent, a independent of b: m = S ā ⊗ b̄, B = S E[b bᵀ] over uses), c = 1/S gives
1 − δ = (āᵀA⁻¹ā)(b̄ᵀE[b bᵀ]⁻¹b̄) < 1 (Jensen: ā āᵀ ⪯ E[a aᵀ]), so δ > 0; c = 1 gives
S times that. Measured on Li and LiH (README, scripts/bench_kfac_centred.py), neither model
holds: δ < 0 on most layers for both weights, and the guard drops the term. 'fit': c chosen
so that the centred block is exact along u, uᵀ(M − c m mᵀ)u = uᵀ(F + λI)u with the
walker variance of G_i·u from this batch's activations: c = (q − σ²)/q², q = mᵀM⁻¹m,
σ² = uᵀ(F + λI)u, and δ = σ²/q > 0 always (the guard then only catches rounding). It costs
one more contraction of the activations per layer (as much as ĝ). Measured (README): none of
the three moves the direction; the cosine to the exact SR direction changed by ≤ 0.002 on Li
and LiH, and the fitted c is often negative (A ⊗ B is below F along u), hence the default
'none'. Separately centred factors
(A − āāᵀ) ⊗ (B − b̄b̄ᵀ) are a different, weaker approximation and not used.

A, B, m and the diagonal are exponential moving averages with decay `optim.kfac_cov_ema`
(the first step takes the batch values). m is averaged like A and B, not taken per batch:
M − c m mᵀ is then the covariance of one and the same EMA-weighted mixture of batches (for
exact second moments that is PSD by construction), whereas a per-batch mean against
averaged second moments has no such bound and would trip the guard on batch noise. The
damped factors' Cholesky factors, u and δ are refreshed every `optim.kfac_inverse_every`
updates (float64); M⁻¹ĝ is applied by triangular solves (`cho_solve`), not by explicit
inverses: on FermiNet's widest layer (417 × 417) the factorisation and one solve take 3.3 ms
on one core against 9.1 ms for inverting and multiplying (README, issue #13). All of it
lives in `KfacState`, a pytree of arrays, so checkpoints
carry it (schema 3; older layouts: `vmc.optim.kfac_schema`).

'kfac': d = M⁻¹ĝ with M the damped Kronecker/diagonal matrix (centred: M − c m mᵀ per
layer); norm constraint on ĝᵀd = dᵀMd. 'kfac-cg': CG on the exact damped F started at the
KFAC direction, x₀ = α M⁻¹ĝ (α minimises the quadratic along it), preconditioned by a fresh
Nyström sketch of F, not by M⁻¹, which spreads F + λI's λ-cluster (`vmc.optim.kfac_cg`);
norm constraint on dᵀ(F + λI)d. Convention: ĝ = Cov(E_L, O) = g/2 (FermiNet's).

Diagnostic (`optim.kfac_cosines`): each update also solves the exact SR system of its own
batch in sample space (`vmc.optim.kfac_cosine`; n_w × n_w in float64, O formed: n_w p memory)
and reports the cosines of the uncentred, centred and applied directions to it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from vmc.errors import InputError
from vmc.optim.kfac_cg import kfac_started_pcg
from vmc.optim.kfac_cosine import cosine, exact_sr_direction
from vmc.optim.kfac_capture import (DenseLayer, discover_layers, make_statistics,
                                    merge_params, split_params)
from vmc.optim.sr import (Optimizer, OptStats, apply_direction, centred_energies,
                          clip_local_energy, float64_ravel, lr_schedule,
                          norm_constraint_scale)

F64 = jnp.float64


CENTRED_GUARD = 1e-3   # centred KFAC: δ = 1 − c mᵀM⁻¹m at or below this falls back to M
FIT_GUARD = 1e-12      # 'fit': δ = σ²/q > 0 by construction; only rounding is caught


def guard_for(centring: str) -> float:
    """The δ threshold of the centring fall-back: `FIT_GUARD` for 'fit', else
    `CENTRED_GUARD` (fixed c: δ ≤ 1e-3 would let the mean term amplify M⁻¹ over 1000×)."""
    return FIT_GUARD if centring == "fit" else CENTRED_GUARD


class KfacState(NamedTuple):
    """count: () int32 updates done; a, b: {layer: EMA factor} float64; a_chol, b_chol: lower
    Cholesky factors L of the damped factors at the last refresh (A_λ = L Lᵀ); diag:
    params-like nested dict of the other parameters' EMA Fisher diagonal; diag_inv: 1/(diag + λ) at the last refresh; mean:
    {layer: EMA Ḡ (d̃_in, d_out)}; mean_inv: {layer: u = A_λ⁻¹ Ḡ B_λ⁻¹}, weight: {layer: c
    ()} and denominator: {layer: δ = 1 − c ⟨Ḡ, u⟩ ()} at the last refresh; fallbacks: ()
    int32, centring fall-backs (layer-updates) so far."""
    count: jax.Array
    a: dict
    b: dict
    a_chol: dict
    b_chol: dict
    diag: dict
    diag_inv: dict
    mean: dict
    mean_inv: dict
    weight: dict
    denominator: dict
    fallbacks: jax.Array


def damped_factors(a, b, damping: float):
    """(A + π√λ I, B + √λ/π I), π = √((tr A/dim A)/(tr B/dim B)) (traces floored at 1e-30)."""
    ta = jnp.maximum(jnp.trace(a) / a.shape[0], 1e-30)
    tb = jnp.maximum(jnp.trace(b) / b.shape[0], 1e-30)
    pi = jnp.sqrt(ta / tb)
    root = jnp.sqrt(jnp.asarray(damping, F64))
    return (a + pi * root * jnp.eye(a.shape[0], dtype=F64),
            b + root / pi * jnp.eye(b.shape[0], dtype=F64))


def spd_cholesky(m):
    """Lower Cholesky factor of an SPD (n, n) float64 matrix (symmetrised first)."""
    return jnp.linalg.cholesky(0.5 * (m + m.T))


def kron_solve(a_chol, b_chol, g):
    """A_λ⁻¹ G B_λ⁻¹ for G (d̃_in, d_out), from the lower Cholesky factors of A_λ (d̃_in) and
    B_λ (d_out): two pairs of triangular solves, float64."""
    x = jax.scipy.linalg.cho_solve((a_chol, True), g.astype(F64))
    return jax.scipy.linalg.cho_solve((b_chol, True), x.T).T


def cholesky_inverse(chol):
    """(L Lᵀ)⁻¹ (n, n) float64 from a lower Cholesky factor L, symmetrised."""
    inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(chol.shape[0], dtype=F64))
    return 0.5 * (inv + inv.T)


def mean_weights(layers: tuple[DenseLayer, ...], centring: str):
    """{layer: c}, the fixed weight of the subtracted mean term c m mᵀ: 1 for 'walker' (F's
    own mean term), 1/S for 'use' (the mean term of the expand rule's model of S independent
    uses; also for 'none', where only the diagnostic reads it); None for 'fit' (c fitted per
    refresh: `_fitted_weight`)."""
    if centring == "fit":
        return None
    return {ly.name: 1.0 if centring == "walker" else 1.0 / ly.uses for ly in layers}


def _fitted_weight(stats, name, u, q, damping: float):
    """(c, δ) with uᵀ(M − c m mᵀ)u = uᵀ(F + λI)u exactly, u = M⁻¹m, q = mᵀu = uᵀMu:
    c = (q − σ²)/q², δ = 1 − c q = σ²/q, σ² = Var_walkers(G_i·U) + λ|u|² from this batch's
    activations (G_i·U = Σ_s ã_sᵀ U b_s, U = u as a (d̃_in, d_out) matrix)."""
    a, b = stats.activations[name]
    proj = jnp.einsum("nsi,ij,nsj->n", a.astype(F64), u, b.astype(F64),
                      precision=jax.lax.Precision.HIGHEST)
    w = stats.walker_weights
    mean = jnp.dot(w, proj)
    sigma2 = jnp.dot(w, (proj - mean) ** 2) + damping * jnp.vdot(u, u)
    q = jnp.maximum(q, jnp.finfo(F64).tiny)
    return (q - sigma2) / q ** 2, sigma2 / q


def _refresh(a, b, diag, mean, weight, stats, damping: float, previous=None):
    """Cholesky factors of the damped factors, the damped diagonal's inverse; u, c and δ of
    the mean term, or, with `previous` (a KfacState: the mean term is not tracked), its u,
    c and δ unchanged."""
    a_chol, b_chol, mean_inv, c, denominator = {}, {}, {}, {}, {}
    for name in a:
        da, db = damped_factors(a[name], b[name], damping)
        a_chol[name], b_chol[name] = spd_cholesky(da), spd_cholesky(db)
        if previous is not None:
            mean_inv[name] = previous.mean_inv[name]
            c[name], denominator[name] = previous.weight[name], previous.denominator[name]
            continue
        u = kron_solve(a_chol[name], b_chol[name], mean[name])
        q = jnp.vdot(mean[name], u)
        if weight is None:
            c[name], denominator[name] = _fitted_weight(stats, name, u, q, damping)
        else:
            c[name] = jnp.asarray(weight[name], F64)
            denominator[name] = 1.0 - c[name] * q
        mean_inv[name] = u
    return (a_chol, b_chol, jax.tree_util.tree_map(lambda d: 1.0 / (d + damping), diag),
            mean_inv, c, denominator)


def init_state(layers: tuple[DenseLayer, ...], params) -> KfacState:
    """Zero factors and mean (the first update replaces them) and identity Cholesky factors."""
    _, other = split_params(layers, params)
    dims = {ly.name: (ly.d_in + int(ly.bias), ly.d_out) for ly in layers}
    eye = lambda n: jnp.eye(n, dtype=F64)  # noqa: E731
    diag = traverse_util.unflatten_dict({k: jnp.zeros(v.shape, F64) for k, v in other.items()})
    zeros = {k: jnp.zeros(d, F64) for k, d in dims.items()}
    return KfacState(jnp.zeros((), jnp.int32),
                     {k: jnp.zeros((i, i), F64) for k, (i, _) in dims.items()},
                     {k: jnp.zeros((o, o), F64) for k, (_, o) in dims.items()},
                     {k: eye(i) for k, (i, _) in dims.items()},
                     {k: eye(o) for k, (_, o) in dims.items()},
                     diag, jax.tree_util.tree_map(jnp.ones_like, diag),
                     zeros, dict(zeros), {k: jnp.zeros((), F64) for k in dims},
                     {k: jnp.ones((), F64) for k in dims}, jnp.zeros((), jnp.int32))


def accumulate(state: KfacState, stats, cfg, weight, track_mean: bool = True) -> KfacState:
    """Moving averages of the factors and of Ḡ; Cholesky factors, u, c and δ refreshed every
    `kfac_inverse_every` updates (weight: `mean_weights`, None: c fitted on this batch). The
    fall-back total is left to `make_kfac`'s update. track_mean False (no centring and no
    cosine diagnostic): Ḡ, u, c and δ stay as they are, so plain KFAC pays nothing for them."""
    decay = jnp.where(state.count == 0, 0.0, cfg.kfac_cov_ema).astype(F64)
    ema = lambda old, new: decay * old + (1.0 - decay) * new  # noqa: E731
    a = jax.tree_util.tree_map(ema, state.a, stats.a)
    b = jax.tree_util.tree_map(ema, state.b, stats.b)
    mean = jax.tree_util.tree_map(ema, state.mean, stats.mean) if track_mean else state.mean
    diag = jax.tree_util.tree_map(ema, state.diag, traverse_util.unflatten_dict(stats.diag))
    a_chol, b_chol, diag_inv, mean_inv, c, denominator = jax.lax.cond(
        state.count % cfg.kfac_inverse_every == 0,
        lambda: _refresh(a, b, diag, mean, weight, stats, cfg.damping,
                          None if track_mean else state),
        lambda: (state.a_chol, state.b_chol, state.diag_inv, state.mean_inv, state.weight,
                 state.denominator))
    return KfacState(state.count + 1, a, b, a_chol, b_chol, diag, diag_inv, mean, mean_inv,
                     c, denominator, state.fallbacks)


def centring_ok(state: KfacState, guard: float = CENTRED_GUARD) -> dict:
    """{layer: () bool}: δ = 1 − c mᵀM⁻¹m > guard, i.e. M − c m mᵀ ⪰ guard·M is used."""
    return {n: d > guard for n, d in state.denominator.items()}


def precondition(state: KfacState, grad, centred: bool = False,
                 guard: float = CENTRED_GUARD):
    """M⁻¹ĝ for ĝ in split form ({layer: (d̃_in, d_out)}, {other key: array}), float64.

    centred: each Dense block is (M − c m mᵀ)⁻¹ĝ = M⁻¹ĝ + (c/δ) u ⟨u, ĝ⟩ (Sherman–Morrison;
    u = M⁻¹m, c, δ from `KfacState`) where `centring_ok` (guard: the δ threshold), M⁻¹ĝ
    elsewhere (the guard's fall-back). The Kronecker blocks are applied by triangular solves
    with the Cholesky factors (`kron_solve`).
    """
    g_dense, g_other = grad
    d_dense = {n: kron_solve(state.a_chol[n], state.b_chol[n], g) for n, g in g_dense.items()}
    if centred:
        ok = centring_ok(state, guard)
        for n, g in g_dense.items():
            u, delta = state.mean_inv[n], state.denominator[n]
            coef = jnp.where(ok[n], state.weight[n] * jnp.vdot(u, g.astype(F64))
                             / jnp.where(ok[n], delta, 1.0), 0.0)
            d_dense[n] = d_dense[n] + coef * u
    inv = traverse_util.flatten_dict(state.diag_inv)
    return d_dense, {k: g.astype(F64) * inv[k] for k, g in g_other.items()}


def n_fallbacks(state: KfacState, guard: float = CENTRED_GUARD) -> jax.Array:
    """() int32: layers whose centring falls back to M (δ ≤ guard)."""
    return sum((~ok).astype(jnp.int32) for ok in centring_ok(state, guard).values())


def _dot(x, y) -> jax.Array:
    return sum(jnp.vdot(a.astype(F64), b.astype(F64)) for a, b in
               zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)))


def _n_electrons(module) -> int:
    try:
        return int(module.n_up) + int(module.n_down)
    except AttributeError:
        raise InputError("optim.solver kfac/kfac-cg: the ansatz module has no n_up/n_down; "
                         "use a FermiNet or Psiformer ansatz or another solver") from None


def _cosines(cfg, log_psi, layers, params, walkers, eps, mask, state, grad, applied):
    """cos∠ to the exact SR direction of this batch of the uncentred KFAC, centred KFAC (with
    kfac_centring 'none': the 'use' centring the state carries) and applied directions
    (`vmc.optim.kfac_cosine`)."""
    ravel, _ = float64_ravel(params)
    exact = exact_sr_direction(log_psi, params, walkers, eps, cfg.damping, mask,
                               cfg.jacobian_chunk)
    flat = lambda split: ravel(merge_params(layers, *split))  # noqa: E731
    return (cosine(flat(precondition(state, grad, False)), exact),
            cosine(flat(precondition(state, grad, True, guard_for(cfg.kfac_centring))), exact),
            cosine(ravel(applied), exact))


def make_kfac(cfg, log_psi: Callable, module, kind: str = "kfac") -> Optimizer:
    """'kfac' or 'kfac-cg' for a flax linen ansatz `module` (whose Dense layers are captured).

    Args:
      cfg: `vmc.config.OptimConfig` (lr, lr_decay_steps, damping > 0, norm_constraint, clip,
        kfac_cov_ema, kfac_inverse_every, kfac_centring, kfac_cosines (+ jacobian_chunk);
        cg_maxiter, cg_tol, nystrom_rank for 'kfac-cg').
      log_psi: (params, x) -> (sign, logabs), calling `module.apply`.
      module: the flax module (`Ansatz.module`).
    Stats: fallbacks = layers whose centring fell back to M this update; with kfac_cosines
      the three cosines (`OptStats`).
    Raises:
      InputError: no module (e.g. the 'hf' ansatz), or damping <= 0.
    """
    if module is None:
        raise InputError(f"optim.solver {kind}: needs a flax ansatz (ferminet, psiformer); "
                         f"use sample, cg or spring")
    if not cfg.damping > 0:
        raise InputError(f"optim.damping: {cfg.damping} is not valid for {kind}; valid: > 0")
    n_electrons = _n_electrons(module)
    centred = cfg.kfac_centring != "none"
    guard = guard_for(cfg.kfac_centring)
    schedule = lr_schedule(cfg.lr, cfg.lr_decay_steps)

    def init(params):
        return init_state(discover_layers(log_psi, params, n_electrons), params)

    def update(params, state, walkers, e_l, step, mask=None):
        e_clip, frac = clip_local_energy(e_l, cfg.clip, mask)
        eps = centred_energies(e_clip.astype(F64), mask)
        layers = discover_layers(log_psi, params, n_electrons)
        stats = make_statistics(log_psi, layers)(params, walkers, eps, mask)
        state = accumulate(state, stats, cfg, mean_weights(layers, cfg.kfac_centring),
                           track_mean=centred or cfg.kfac_cosines)
        fallbacks = n_fallbacks(state, guard) if centred else jnp.zeros((), jnp.int32)
        state = state._replace(fallbacks=state.fallbacks + fallbacks)
        d = precondition(state, stats.grad, centred, guard)
        zero = jnp.zeros((), F64)
        if kind == "kfac":
            curvature, iters, resid = _dot(stats.grad, d), zero, zero
            direction = merge_params(layers, *d)
        else:
            ravel, unravel = float64_ravel(params)
            flat = lambda split: ravel(merge_params(layers, *split))  # noqa: E731
            x, curvature, iters, resid = kfac_started_pcg(
                cfg, log_psi, params, walkers, flat(stats.grad), flat(d), state.count, mask)
            direction = unravel(x)
        lr = schedule(step)
        scale = norm_constraint_scale(curvature, lr, cfg.norm_constraint)
        direction = jax.tree_util.tree_structure(params).unflatten(
            jax.tree_util.tree_leaves(direction))
        new, norm = apply_direction(params, direction, lr, scale)
        cosines = (_cosines(cfg, log_psi, layers, params, walkers, eps, mask, state,
                            stats.grad, direction) if cfg.kfac_cosines else ())
        return new, state, OptStats(lr, norm, scale, frac, iters, resid,
                                    fallbacks.astype(F64), *cosines)

    return Optimizer(init, update)
