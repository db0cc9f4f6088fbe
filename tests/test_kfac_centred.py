"""Contract tests of centred KFAC (`optim.kfac_centring`, vmc.optim.kfac; MATH.md §7).

Float64, small flax toys (cheap to compile). Directions are read off the update with η = 1,
no decay and no norm constraint: d = θ − θ'. The reference is a dense solve of the
optimizer's own matrix, assembled in numpy from its state: per Dense layer
(A + π√λ I) ⊗ (B + √λ/π I) − c m mᵀ where δ = 1 − c mᵀM⁻¹m > guard (else the uncentred
block), the exact centred diagonal + λ elsewhere.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from vmc.config import OptimConfig
from vmc.optim import make_optimizer
from vmc.optim.kfac import (CENTRED_GUARD, FIT_GUARD, init_state, n_fallbacks,
                            precondition)
from vmc.optim.kfac_capture import discover_layers, make_statistics
from vmc.optim.sr import centred_energies, centred_jacobian

from helpers import TwoLayer, toy_batch

LAMBDA = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _float64_module():
    with jax.enable_x64(True):
        yield


class _OneUse(nn.Module):
    """One Dense layer used once per walker on the flattened coordinates, read out by a
    fixed vector c: G = ã cᵀ, so a and b are independent and δ > 0 for c = 1 (Jensen)."""
    n_up: int = 2
    n_down: int = 0

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(3, name="w", param_dtype=jnp.float64)(x.ravel())
        return jnp.ones((), x.dtype), jnp.dot(y, jnp.array([1.0, -0.5, 0.25]))


def _cfg(**kw):
    base = dict(solver="kfac", lr=1.0, lr_decay_steps=1e15, damping=LAMBDA,
                norm_constraint=None, clip=None, kfac_centring="walker")
    return OptimConfig(**{**base, **kw})


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _step(cfg, module, log_psi, params, x, e_l, state=None):
    opt = make_optimizer(cfg, log_psi, module=module)
    state = opt.init(params) if state is None else state
    new, state, stats = jax.jit(opt.update)(params, state, x, e_l, 0)
    return (_flat(params) - _flat(new)) / cfg.lr, state, stats


def _indices(params):
    flat, unravel = ravel_pytree(params)
    return jax.tree_util.tree_map(lambda v: np.asarray(v).round().astype(int),
                                  unravel(jnp.arange(flat.size, dtype=flat.dtype)))


def _layer_idx(idx, name):
    node = idx["params"]
    for part in name.split("."):
        node = node[part]
    w = node["kernel"]
    if "bias" in node:
        w = np.vstack([w, node["bias"][None, :]])
    return w.ravel()                                             # vec(W̃), row-major


def _own_matrix(params, state, weights, damping=LAMBDA, guard=CENTRED_GUARD):
    """(the optimizer's damped matrix (p, p) in ravel order, {layer: δ}, fall-backs)."""
    idx = _indices(params)
    p = _flat(params).size
    m_full = np.zeros((p, p))
    covered = np.zeros(p, bool)
    root = np.sqrt(damping)
    deltas, falls = {}, 0
    for name in state.a:
        w_idx = _layer_idx(idx, name)
        a, b = np.asarray(state.a[name]), np.asarray(state.b[name])
        pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(b) / b.shape[0]))
        m = np.kron(a + pi * root * np.eye(a.shape[0]), b + root / pi * np.eye(b.shape[0]))
        mean = np.asarray(state.mean[name]).ravel()
        delta = 1.0 - weights[name] * mean @ np.linalg.solve(m, mean)
        deltas[name] = delta
        if delta > guard:
            m = m - weights[name] * np.outer(mean, mean)
        else:
            falls += 1
        m_full[np.ix_(w_idx, w_idx)] = m
        covered[w_idx] = True
    if jax.tree_util.tree_leaves(state.diag):
        diag_idx = _flat(jax.tree_util.tree_map(lambda i, d: i, _sub(idx, state.diag),
                                                state.diag))
        m_full[diag_idx, diag_idx] = _flat(state.diag) + damping
        covered[diag_idx] = True
    assert covered.all()
    return m_full, deltas, falls


def _sub(tree, like):
    if isinstance(like, dict):
        return {k: _sub(tree[k], v) for k, v in like.items()}
    return tree


def _gradient(log_psi, params, x, e_l):
    obar = np.asarray(jax.jit(lambda p, xx: centred_jacobian(log_psi, p, xx)[0])(params, x))
    return obar, obar.T @ np.asarray(centred_energies(e_l))


def test_mean_is_the_walker_mean_of_the_layer_gradient(x64):
    """Ḡ = E[∂log|ψ|/∂W̃] exactly, so that E[vec G vec Gᵀ] − m mᵀ is F's block (ŌᵀŌ)."""
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 6, 3)
    layers = discover_layers(log_psi, params, 3)
    stats = jax.jit(make_statistics(log_psi, layers))(params, x, centred_energies(e_l))
    o = np.asarray(jax.vmap(lambda xx: ravel_pytree(jax.grad(
        lambda p: log_psi(p, xx)[1])(params))[0])(x))                   # (n_w, p) uncentred
    obar, _ = _gradient(log_psi, params, x, e_l)
    idx = _indices(params)
    for ly in layers:
        w_idx = _layer_idx(idx, ly.name)
        m = np.asarray(stats.mean[ly.name]).ravel()
        np.testing.assert_allclose(m, o[:, w_idx].mean(0), rtol=1e-12, atol=1e-15)
        block = o[:, w_idx].T @ o[:, w_idx] / 6 - np.outer(m, m)
        np.testing.assert_allclose(block, (obar.T @ obar)[np.ix_(w_idx, w_idx)], atol=1e-12)


@pytest.mark.parametrize("centring", ["walker", "use"])
def test_centred_direction_equals_dense_solve_of_its_matrix(x64, centring):
    module = _OneUse()
    log_psi, params, x, e_l = toy_batch(module, 12, 2, shift=0.7)
    d, state, stats = _step(_cfg(kfac_centring=centring), module, log_psi, params, x, e_l)
    _, g = _gradient(log_psi, params, x, e_l)
    m, deltas, falls = _own_matrix(params, state, {"w": 1.0})      # one use: c = 1 either way
    assert falls == 0 and 0 < deltas["w"] < 1 and int(stats.fallbacks) == 0
    np.testing.assert_allclose(float(state.denominator["w"]), deltas["w"], rtol=1e-10)
    assert np.linalg.norm(d - np.linalg.solve(m, g)) / np.linalg.norm(d) < 1e-10
    # and it is not the uncentred direction
    d_u, _, _ = _step(_cfg(kfac_centring="none"), module, log_psi, params, x, e_l)
    assert np.linalg.norm(d - d_u) / np.linalg.norm(d) > 1e-3


@pytest.mark.parametrize("centring", ["walker", "use"])
def test_shared_layers_dense_solve_and_fallback_count(x64, centring):
    """S = 3 uses: c = 1 or 1/3; each layer centred or fallen back as its own δ says."""
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 16, 3, shift=0.3)
    d, state, stats = _step(_cfg(kfac_centring=centring), module, log_psi, params, x, e_l)
    weights = {n: 1.0 if centring == "walker" else 1.0 / 3 for n in state.a}
    m, deltas, falls = _own_matrix(params, state, weights)
    _, g = _gradient(log_psi, params, x, e_l)
    assert np.linalg.norm(d - np.linalg.solve(m, g)) / np.linalg.norm(d) < 1e-10
    assert int(stats.fallbacks) == falls == int(state.fallbacks)
    for name, delta in deltas.items():
        np.testing.assert_allclose(float(state.denominator[name]), delta, rtol=1e-9)


def test_fit_is_exact_along_the_mean_direction(x64):
    """'fit': c = (q − σ²)/q² makes uᵀ(M − c m mᵀ)u = uᵀ(F + λI)u for u = M⁻¹m (F: this
    batch's exact block), so δ = σ²/q > 0 and no layer falls back; the direction is the
    dense solve of that matrix."""
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 16, 3, shift=0.3)
    d, state, stats = _step(_cfg(kfac_centring="fit"), module, log_psi, params, x, e_l)
    obar, g = _gradient(log_psi, params, x, e_l)
    f = obar.T @ obar + LAMBDA * np.eye(g.size)
    idx = _indices(params)
    m_plain, _, _ = _own_matrix(params, state, {n: 0.0 for n in state.a})
    weights = {}
    for name in state.a:
        w_idx = _layer_idx(idx, name)
        mean = np.asarray(state.mean[name]).ravel()
        block = m_plain[np.ix_(w_idx, w_idx)]
        u = np.linalg.solve(block, mean)
        np.testing.assert_allclose(np.asarray(state.mean_inv[name]).ravel(), u, rtol=1e-9)
        q, sigma2 = mean @ u, u @ f[np.ix_(w_idx, w_idx)] @ u
        weights[name] = (q - sigma2) / q ** 2
        np.testing.assert_allclose(float(state.weight[name]), weights[name], rtol=1e-8)
        np.testing.assert_allclose(float(state.denominator[name]), sigma2 / q, rtol=1e-8)
        centred = block - weights[name] * np.outer(mean, mean)
        np.testing.assert_allclose(u @ centred @ u, sigma2, rtol=1e-8)
    m, deltas, falls = _own_matrix(params, state, weights, guard=FIT_GUARD)
    assert falls == 0 == int(stats.fallbacks) and min(deltas.values()) > FIT_GUARD
    assert np.linalg.norm(d - np.linalg.solve(m, g)) / np.linalg.norm(d) < 1e-10


def test_guard_falls_back_and_counts(x64):
    """A mean term with 1 − c mᵀM⁻¹m ≤ guard is dropped (that layer only) and counted."""
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 16, 3, shift=0.3)
    cfg = _cfg(kfac_centring="use", kfac_cov_ema=0.5)
    _, s1, _ = _step(cfg, module, log_psi, params, x, e_l)
    # scale the stored mean of one layer: its next EMA mean gives δ ≪ 0, the other stays
    weights = {n: 1.0 / 3 for n in s1.a}
    _, deltas1, _ = _own_matrix(params, s1, weights)
    big = max(deltas1, key=lambda n: deltas1[n])          # the layer with the larger δ
    mean = dict(s1.mean)
    mean[big] = 40.0 * mean[big]
    d, s2, stats = _step(cfg, module, log_psi, params, x, e_l, state=s1._replace(mean=mean))
    m, deltas2, falls = _own_matrix(params, s2, weights)
    assert deltas2[big] <= CENTRED_GUARD
    _, g = _gradient(log_psi, params, x, e_l)
    assert np.linalg.norm(d - np.linalg.solve(m, g)) / np.linalg.norm(d) < 1e-10
    assert int(stats.fallbacks) == falls >= 1
    assert int(s2.fallbacks) == int(s1.fallbacks) + falls


def test_guard_threshold_boundary(x64):
    """δ = guard falls back (the block is M alone); δ = 2·guard applies M⁻¹ĝ + (c/δ)u⟨u, ĝ⟩
    (c = 1)."""
    module = _OneUse()
    log_psi, params, x, _ = toy_batch(module, 4, 2)
    layers = discover_layers(log_psi, params, 2)
    state = init_state(layers, params)
    rng = np.random.default_rng(3)
    u = jnp.asarray(rng.normal(size=state.mean["w"].shape))
    grad = ({"w": jnp.asarray(rng.normal(size=u.shape))}, {})
    plain = np.asarray(precondition(state, grad, False)[0]["w"])
    for delta, expect_fall in ((CENTRED_GUARD, 1), (2 * CENTRED_GUARD, 0)):
        st = state._replace(mean_inv={"w": u}, weight={"w": jnp.asarray(1.0)},
                            denominator={"w": jnp.asarray(delta)})
        d = np.asarray(precondition(st, grad, True)[0]["w"])
        assert int(n_fallbacks(st)) == expect_fall
        want = plain + (0 if expect_fall else np.vdot(u, grad[0]["w"]) / delta * np.asarray(u))
        np.testing.assert_allclose(d, want, rtol=1e-12)


def test_cosines_diagnostic(x64):
    """optim.kfac_cosines: cos∠ to the exact (F + λI)⁻¹ĝ of the uncentred, centred and
    applied directions; NaN when off."""
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 16, 3, shift=0.3)
    obar, g = _gradient(log_psi, params, x, e_l)
    exact = np.linalg.solve(obar.T @ obar + LAMBDA * np.eye(g.size), g)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    d_u, _, _ = _step(_cfg(kfac_centring="none"), module, log_psi, params, x, e_l)
    d_c, _, off = _step(_cfg(kfac_centring="use"), module, log_psi, params, x, e_l)
    assert np.isnan(float(off.cosine_centred))
    for solver in ("kfac", "kfac-cg"):
        d, _, st = _step(_cfg(solver=solver, kfac_centring="use", kfac_cosines=True,
                              cg_maxiter=2), module, log_psi, params, x, e_l)
        np.testing.assert_allclose(float(st.cosine_uncentred), cos(d_u, exact), rtol=1e-9)
        np.testing.assert_allclose(float(st.cosine_centred), cos(d_c, exact), rtol=1e-9)
        np.testing.assert_allclose(float(st.cosine_applied), cos(d, exact), rtol=1e-9)
    assert float(st.cosine_applied) > float(st.cosine_centred)    # 2 CG iterations help


def test_fit_leaves_masked_walkers_out(x64):
    """A walker masked out changes nothing: 'fit' on n_w walkers with the last one masked
    equals 'fit' on the first n_w − 1 (c, δ and the direction)."""
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 17, 3, shift=0.3)
    cfg = _cfg(kfac_centring="fit")
    opt = make_optimizer(cfg, log_psi, module=module)
    update = jax.jit(opt.update)
    mask = jnp.arange(17) < 16
    e_masked = jnp.where(mask, e_l, 0.0)
    new_m, s_m, _ = update(params, opt.init(params), x, e_masked, 0, mask)
    new_r, s_r, _ = update(params, opt.init(params), x[:16], e_l[:16], 0)
    for name in s_r.weight:
        np.testing.assert_allclose(float(s_m.weight[name]), float(s_r.weight[name]),
                                   rtol=1e-9)
        np.testing.assert_allclose(float(s_m.denominator[name]),
                                   float(s_r.denominator[name]), rtol=1e-9)
    np.testing.assert_allclose(_flat(new_m), _flat(new_r), rtol=1e-9, atol=1e-12)
