"""Contract tests of `nystrom-cg` (vmc.optim.nystrom): the sketch, the preconditioner, the
solve against the dense SR direction, sketch reuse, and float64 where the module says so.

Float64 except where a float32 network is the point. Small flax MLPs with n_w < p, so F has
rank n_w − 1 < p as in training; directions read off the update with η = 1, no decay, no norm
constraint, no clipping: d = θ − θ'.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc.config import OptimConfig
from vmc.optim import make_optimizer
from vmc.optim.cg import linearize_fisher, pcg
from vmc.optim.nystrom import (eigenpairs_from_jacobian, nystrom_preconditioner,
                               nystrom_sketch)
from vmc.optim.sr import centred_energies, centred_jacobian

LAMBDA = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _float64_module():
    with jax.enable_x64(True):
        yield


class _MLP(nn.Module):
    """log|ψ| = Σ_s w · tanh(W x_s + b) − α Σ x² over the rows x_s of x (p = 4h + h + 1)."""
    hidden: int = 16
    dtype: object = jnp.float64

    @nn.compact
    def __call__(self, x):
        x = x.astype(self.dtype)
        h = jnp.tanh(nn.Dense(self.hidden, name="hidden", param_dtype=self.dtype)(x))
        y = nn.Dense(1, use_bias=False, name="out", param_dtype=self.dtype)(h)
        alpha = self.param("alpha", nn.initializers.ones, (), self.dtype)
        return jnp.ones((), x.dtype), jnp.sum(y) - alpha * jnp.sum(x * x)


def _problem(n_w=24, hidden=16, seed=0, dtype=jnp.float64):
    module = _MLP(hidden, dtype)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n_w, 2, 3)))
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), x[0])
    e_l = jnp.asarray(rng.normal(size=n_w))
    return (lambda p, xx: module.apply(p, xx)), params, x, e_l


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _cfg(**kw):
    base = dict(solver="nystrom-cg", lr=1.0, lr_decay_steps=1e15, damping=LAMBDA,
                norm_constraint=None, clip=None, cg_maxiter=500, cg_tol=1e-10)
    return OptimConfig(**{**base, **kw})


def _exact(log_psi, params, x, e_l, damping=LAMBDA):
    obar = np.asarray(jax.jit(lambda p, xx: centred_jacobian(log_psi, p, xx)[0])(params, x))
    eps = np.asarray(centred_energies(e_l))
    return obar, obar.T @ eps, obar.T @ obar + damping * np.eye(obar.shape[1])


# ------------------------------------------------------------------------------ linear algebra
def test_sketch_is_exact_for_low_rank_and_a_lower_bound_otherwise():
    rng = np.random.default_rng(0)
    p, r = 80, 12
    a = rng.normal(size=(r, p)) * np.logspace(0, -3, r)[:, None]
    f = a.T @ a                                          # rank 12, spread spectrum
    lam_true = np.linalg.eigvalsh(f)[::-1]
    omega = jnp.asarray(rng.normal(size=(p, 16)))
    u, lam = nystrom_sketch(lambda w: jnp.asarray(f) @ w, omega)
    u, lam = np.asarray(u), np.asarray(lam)
    # orthonormal columns (a column dropped for a zero Ritz value is 0)
    np.testing.assert_allclose(u.T @ u, np.diag((np.linalg.norm(u, axis=0) > 0.5) * 1.0),
                               atol=1e-12)
    assert np.sum(np.linalg.norm(u, axis=0) > 0.5) >= r
    np.testing.assert_allclose(lam[:r], lam_true[:r], rtol=1e-6, atol=1e-11 * lam_true[0])
    np.testing.assert_allclose(lam[r:], 0.0, atol=1e-12 * lam_true[0])
    np.testing.assert_allclose(u @ np.diag(lam) @ u.T, f, atol=1e-10 * lam_true[0])
    # ℓ < rank: the Nyström approximation F̂ satisfies 0 ⪯ F̂ ⪯ F and λ̂_i ≤ λ_i
    u, lam = (np.asarray(t) for t in nystrom_sketch(lambda w: jnp.asarray(f) @ w, omega[:, :6]))
    gap = np.linalg.eigvalsh(f - u @ np.diag(lam) @ u.T)
    assert gap.min() >= -1e-10 * lam_true[0] and gap.max() > 1e-6 * lam_true[0]
    assert np.all(lam <= lam_true[:6] * (1 + 1e-10)) and np.all(lam >= 0)


def test_preconditioner_formula_and_spectrum():
    """P⁻¹ = U diag((λ_ℓ + μ)/(λ_i + μ)) Uᵀ + I − UUᵀ; with F's exact top-ℓ eigenpairs the
    spectrum of P⁻¹(F + μI) is {λ_ℓ + μ} (ℓ times) ∪ {λ_i + μ: i > ℓ}."""
    rng = np.random.default_rng(1)
    p, r, ell, mu = 40, 10, 4, 1e-2
    a = rng.normal(size=(r, p))
    f = a.T @ a
    w, v = np.linalg.eigh(f)
    w, v = w[::-1], v[:, ::-1]
    u, lam = v[:, :ell], w[:ell]
    apply = jax.jit(nystrom_preconditioner(jnp.asarray(u), jnp.asarray(lam), mu))
    p_inv = np.stack([np.asarray(apply(jnp.asarray(e))) for e in np.eye(p)], axis=1)
    ref = u @ np.diag((lam[-1] + mu) / (lam + mu)) @ u.T + np.eye(p) - u @ u.T
    np.testing.assert_allclose(p_inv, ref, atol=1e-13)
    spec = np.sort(np.linalg.eigvals(p_inv @ (f + mu * np.eye(p))).real)
    expect = np.sort(np.concatenate([np.full(ell, lam[-1] + mu), w[ell:] + mu]))
    np.testing.assert_allclose(spec, expect, rtol=1e-9, atol=1e-12)
    # U = 0 (the state before the first sketch) is the identity
    r0 = jnp.asarray(rng.normal(size=p))
    np.testing.assert_array_equal(nystrom_preconditioner(jnp.zeros((p, ell)),
                                                         jnp.zeros(ell), mu)(r0), r0)


# ------------------------------------------------------------------------------ the solver
def test_nystrom_cg_equals_dense_and_full_rank_sketch_needs_two_iterations():
    n_w = 24
    log_psi, params, x, e_l = _problem(n_w)
    obar, g, f = _exact(log_psi, params, x, e_l)
    assert obar.shape[1] > n_w and np.linalg.matrix_rank(obar) == n_w - 1
    d_ref = np.linalg.solve(f, g)
    full = None
    for ell, max_iters in ((n_w - 1, 2), (6, 500)):
        opt = make_optimizer(_cfg(nystrom_rank=ell), log_psi)
        new, state, stats = jax.jit(opt.update)(params, opt.init(params), x, e_l, 0)
        d = _flat(params) - _flat(new)
        assert float(stats.residual) <= 1e-10 and 0 < int(stats.iterations) <= max_iters
        assert np.linalg.norm(f @ d - g) <= 1e-9 * np.linalg.norm(g)
        assert np.linalg.norm(d - d_ref) <= 1e-8 * np.linalg.norm(d_ref)
        np.testing.assert_allclose(np.asarray(state.direction), d, rtol=1e-12, atol=1e-15)
        full = state if ell == n_w - 1 else full
    # the last full-rank sketch of this batch: F's nonzero eigenvalues
    np.testing.assert_allclose(np.asarray(full.eigenvalues),
                               np.linalg.svd(obar, compute_uv=False)[:n_w - 1] ** 2, rtol=1e-8)


def test_exact_eigenpairs_cut_iterations_to_the_distinct_eigenvalue_bound():
    """At λ = 1e-3, PCG with F's exact top-ℓ eigenpairs needs at most rank − ℓ + 2 iterations
    (the distinct eigenvalues of P⁻¹(F + λI)); plain CG needs more than that."""
    n_w, tol = 32, 1e-6
    log_psi, params, x, e_l = _problem(n_w, hidden=24, seed=2)
    obar, g, _ = _exact(log_psi, params, x, e_l)
    rank = n_w - 1

    @jax.jit
    def iterations(u, lam, use):
        op = linearize_fisher(log_psi, params, x, LAMBDA)
        pre = nystrom_preconditioner(u, lam, LAMBDA)
        res = pcg(op.matvec, jnp.asarray(g), jnp.zeros(g.shape), 500, tol,
                  lambda r: jnp.where(use, pre(r), r))
        return res.iterations

    u, lam = eigenpairs_from_jacobian(obar, 16)
    plain = int(iterations(u, lam, False))
    for ell in (8, 16):
        pre = int(iterations(u[:, :ell], lam[:ell], True))
        assert pre <= rank - ell + 2 < plain, (ell, pre, plain)


def test_sketch_reused_then_refreshed():
    log_psi, params, x, e_l = _problem(16)
    _, _, x2, e_l2 = _problem(16, seed=3)
    opt = make_optimizer(_cfg(nystrom_rank=4, nystrom_refresh_every=3,
                              nystrom_refresh_iters=10_000), log_psi)
    update = jax.jit(opt.update)
    state, bases, ages = opt.init(params), [], []
    for t in range(4):
        _, state, _ = update(params, state, x2 if t % 2 else x, e_l2 if t % 2 else e_l, t)
        bases.append(np.asarray(state.basis))
        ages.append(int(state.age))
    assert ages == [0, 1, 2, 0] and int(state.count) == 4
    np.testing.assert_array_equal(bases[1], bases[0])
    np.testing.assert_array_equal(bases[2], bases[0])
    assert not np.allclose(np.abs(bases[3]), np.abs(bases[0]))
    # a solve above the iteration threshold forces a new sketch at the next update
    opt = make_optimizer(_cfg(nystrom_rank=4, nystrom_refresh_every=100,
                              nystrom_refresh_iters=0), log_psi)
    update = jax.jit(opt.update)
    _, s1, st1 = update(params, opt.init(params), x, e_l, 0)
    _, s2, _ = update(params, s1, x2, e_l2, 1)
    assert int(st1.iterations) > 0 and int(s2.age) == 0
    assert not np.allclose(np.abs(np.asarray(s2.basis)), np.abs(np.asarray(s1.basis)))


def _eqns(jaxpr):
    """Every equation of a jaxpr, recursing into sub-jaxprs (cond branches, loops, maps)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else [v]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def test_float32_network_float64_sketch_and_cg():
    """With a float32 network the products run in float32 while the sketch's Cholesky
    factorizations, triangular solves and eigendecomposition, the preconditioner and the
    CG inner products are float64."""
    log_psi, params, x, e_l = _problem(16, dtype=jnp.float32)
    assert all(t.dtype == jnp.float32 for t in jax.tree_util.tree_leaves(params))
    opt = make_optimizer(_cfg(nystrom_rank=4, cg_tol=1e-4), log_psi)
    state = opt.init(params)
    jaxpr = jax.make_jaxpr(opt.update)(params, state, x.astype(jnp.float32),
                                       e_l.astype(jnp.float32), 0).jaxpr
    eqns = list(_eqns(jaxpr))
    names = {e.primitive.name for e in eqns}
    linalg = {"cholesky", "triangular_solve", "eigh", "svd", "geqrf", "householder_product",
              "qr"}
    found = names & linalg
    assert {"cholesky", "triangular_solve", "eigh"} <= found, names
    for e in eqns:
        if e.primitive.name in linalg:
            assert all(v.aval.dtype == jnp.float64 for v in e.invars), (e.primitive, e.invars)
    # the network's own products stay float32: some tanh runs in float32
    assert any(e.primitive.name == "tanh" and e.outvars[0].aval.dtype == jnp.float32
               for e in eqns)
    # CG: every scalar dot product (p-vectors -> ()) is float64
    dots = [e for e in eqns if e.primitive.name == "dot_general" and e.outvars[0].aval.shape == ()]
    assert dots and all(e.outvars[0].aval.dtype == jnp.float64 for e in dots)
    new, state2, stats = jax.jit(opt.update)(params, state, x.astype(jnp.float32),
                                             e_l.astype(jnp.float32), 0)
    assert all(t.dtype == jnp.float64 for t in (state2.basis, state2.eigenvalues,
                                                 state2.direction))
    assert np.all(np.isfinite(_flat(new))) and float(stats.residual) <= 1e-4


def test_config_lists_nystrom_cg_and_refuses_zero_damping():
    from vmc.config import config_from_dict
    from vmc.errors import InputError
    he = {"atoms": [{"symbol": "He", "position": [0.0, 0.0, 0.0]}]}
    cfg = config_from_dict({**he, "optim": {"solver": "nystrom-cg"}})
    assert (cfg.optim.nystrom_rank, cfg.optim.nystrom_refresh_every) == (16, 1)
    with pytest.raises(InputError, match=r"optim.solver: 'nystrom' is not valid; valid: .*"
                                         r"nystrom-cg"):
        config_from_dict({**he, "optim": {"solver": "nystrom"}})
    with pytest.raises(InputError, match=r"^optim.damping: 0.0 is not valid for nystrom-cg"):
        config_from_dict({**he, "optim": {"solver": "nystrom-cg", "damping": 0.0}})
    with pytest.raises(InputError, match="optim.damping"):
        make_optimizer(_cfg(damping=0.0), lambda p, x: (1.0, 0.0))


def test_pcg_takes_the_initial_product_from_the_caller():
    """`pcg(..., ax0=A x₀)` (kfac-cg passes α·(F + λI)d_K, the product that set α) gives the
    solve that computes A x₀ itself, to rounding; a wrong ax0 is really used (the residual
    starts from it), so the saving is not a no-op."""
    log_psi, params, x, e_l = _problem(16)
    _, g, _ = _exact(log_psi, params, x, e_l)
    op = linearize_fisher(log_psi, params, x, LAMBDA)
    g = jnp.asarray(g)
    x0 = 0.5 * g / LAMBDA
    ref = pcg(op.matvec, g, x0, 200, 1e-10)
    given = pcg(op.matvec, g, x0, 200, 1e-10, ax0=op.matvec(x0))
    assert float(ref.residual) <= 1e-10 and int(given.iterations) == int(ref.iterations)
    np.testing.assert_allclose(np.asarray(given.x), np.asarray(ref.x), rtol=1e-9,
                               atol=1e-12 * float(jnp.max(jnp.abs(ref.x))))
    wrong = pcg(op.matvec, g, x0, 0, 1e-10, ax0=jnp.zeros_like(g))
    assert float(wrong.residual) == pytest.approx(1.0)   # r₀ = g − 0
