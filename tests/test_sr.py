"""SR: sample-space solve = dense solve, the linear system, the norm constraint, E_L clipping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from helpers import random_params
from vmc.ansatz import make_ansatz
from vmc.config import AnsatzConfig, OptimConfig
from vmc.optim.sr import (centred_energies, centred_jacobian, clip_local_energy, dense_direction,
                          energy_gradient, make_direct_sr, norm_constraint_scale,
                          sample_space_direction)
from vmc.system import make_molecule

N_WALKERS = 32
DAMPING = 1e-3




@functools.lru_cache(maxsize=None)
def _setup():
    """Tiny float64 FermiNet on LiH, 32 walkers, synthetic local energies with two outliers."""
    mol = make_molecule([{"symbol": "Li", "position": [0.0, 0.0, 0.0]},
                         {"symbol": "H", "position": [3.015, 0.0, 0.0]}])
    cfg = AnsatzConfig(hidden_one=(6, 6), hidden_two=(3, 3), determinants=2)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        ansatz = make_ansatz(cfg, mol, jnp.float64)
        params = random_params(ansatz, seed=2)
        walkers = jnp.asarray(mol.positions[rng.integers(2, size=(N_WALKERS, 4))]
                              + rng.normal(size=(N_WALKERS, 4, 3)))
        e_l = -8.0 + 0.3 * rng.normal(size=N_WALKERS)
        e_l[3], e_l[17] = 40.0, -60.0
        e_l = jnp.asarray(e_l)
    jac = jax.jit(lambda p, w: centred_jacobian(ansatz.log_psi, p, w)[0])
    return ansatz, params, walkers, e_l, jac


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def test_sample_space_direction_equals_dense_and_solves_the_system(x64):
    ansatz, params, walkers, e_l, jac = _setup()
    big = 1e12

    @jax.jit
    def solve(params, walkers, e_l):   # one compilation for everything below
        obar = jac(params, walkers)
        eps = centred_energies(e_l)
        return {"obar": obar, "eps": eps,
                "g_vjp": ravel_pytree(energy_gradient(ansatz.log_psi, params, walkers, eps))[0],
                "sample": sample_space_direction(obar, eps, DAMPING),
                "dense": dense_direction(obar, eps, DAMPING),
                "sample_big": sample_space_direction(obar, eps, big)}

    out = jax.tree_util.tree_map(np.asarray, solve(params, walkers, e_l))
    o, eps = out["obar"], out["eps"]
    n_params = _flat(params).size
    assert o.shape == (N_WALKERS, n_params) and o.dtype == np.float64
    assert 200 < n_params < 2000
    np.testing.assert_allclose(o.sum(axis=0), 0.0, atol=1e-12)          # centred columns
    np.testing.assert_allclose(eps, (e_l - np.mean(e_l)) / np.sqrt(N_WALKERS), rtol=1e-12)
    # Ōᵀε is Cov(E_L, O): the same as the vjp route that energy_gradient takes
    g = o.T @ eps
    np.testing.assert_allclose(out["g_vjp"], g, rtol=0, atol=1e-10 * np.abs(g).max())
    d_sample, d_dense = out["sample"], out["dense"]
    assert d_sample.dtype == np.float64 and d_sample.shape == (n_params,)
    np.testing.assert_allclose(d_sample, d_dense, rtol=0, atol=1e-8 * np.abs(d_dense).max())
    for d in (d_sample, d_dense):   # (ŌᵀŌ + λI) d = Ōᵀε
        residual = o.T @ (o @ d) + DAMPING * d - g
        assert np.linalg.norm(residual) < 1e-9 * np.linalg.norm(g)
    # ĝᵀd = dᵀ(F + λI)d > 0: a descent direction
    assert g @ d_sample > 0
    # large damping: d → ĝ/λ (plain gradient descent), up to O(|F|/λ)
    np.testing.assert_allclose(out["sample_big"] * big, g, rtol=0, atol=1e-6 * np.abs(g).max())


def _update(kind, norm_constraint, clip):
    cfg = OptimConfig(lr=0.1, lr_decay_steps=100.0, damping=DAMPING,
                      norm_constraint=norm_constraint, clip=clip)
    return jax.jit(make_direct_sr(cfg, _setup()[0].log_psi, kind).update), cfg


def _reference_direction(e_l, clip, jac, params, walkers, damping=DAMPING):
    """d and ĝ recomputed here: clip, centre, solve (F + λI) d = ĝ densely in numpy."""
    e = np.asarray(clip_local_energy(e_l, clip)[0])
    eps = (e - e.mean()) / np.sqrt(e.size)
    o = np.asarray(jac(params, walkers))
    g = o.T @ eps
    d = np.linalg.solve(o.T @ o + damping * np.eye(o.shape[1]), g)
    return d, g, o


@pytest.mark.parametrize("kind", ["sample", "dense", "cg", "nystrom-cg"])
def test_scheduled_damping_solves_with_the_decayed_lambda(x64, kind):
    """optim.damping_decay_steps: update t solves with λ_t = max(λ_min, λ₀/(1 + t/t_λ))."""
    from vmc.optim import make_optimizer
    ansatz, params, walkers, e_l, jac = _setup()
    cfg = OptimConfig(solver=kind, lr=0.1, lr_decay_steps=100.0, damping=0.5,
                      damping_decay_steps=10.0, damping_min=0.02, norm_constraint=None,
                      clip=5.0, cg_tol=1e-12, cg_maxiter=400)
    opt = make_optimizer(cfg, ansatz.log_psi)
    update = jax.jit(opt.update)
    theta = _flat(params)
    tol = 1e-8 if kind in ("sample", "dense") else 1e-6
    # t = 30: λ = 0.5/4 = 0.125; t = 1000: 0.5/101 < 0.02, so the floor
    for step, lam in ((0, 0.5), (30, 0.125), (1000, 0.02)):
        new, _, stats = update(params, opt.init(params), walkers, e_l, step)
        lr = cfg.lr / (1 + step / cfg.lr_decay_steps)
        d, _, _ = _reference_direction(e_l, 5.0, jac, params, walkers, damping=lam)
        other, _, _ = _reference_direction(e_l, 5.0, jac, params, walkers, damping=2 * lam)
        delta = theta - _flat(new)
        np.testing.assert_allclose(delta, lr * d, rtol=0, atol=tol * np.abs(lr * d).max())
        assert np.abs(lr * (d - other)).max() > 1e3 * tol * np.abs(lr * d).max()
        np.testing.assert_allclose(float(stats.damping), lam, rtol=1e-12)


def test_direct_sr_sample_and_dense_give_the_same_update(x64):
    ansatz, params, walkers, e_l, jac = _setup()
    step = 30
    out = {}
    for kind in ("sample", "dense"):
        update, cfg = _update(kind, None, 5.0)
        out[kind] = update(params, (), walkers, e_l, step)
    lr = cfg.lr / (1 + step / cfg.lr_decay_steps)
    d, g, _ = _reference_direction(e_l, 5.0, jac, params, walkers)
    theta = _flat(params)
    for kind, (new, _, stats) in out.items():
        delta = theta - _flat(new)
        np.testing.assert_allclose(delta, lr * d, rtol=0, atol=1e-8 * np.abs(lr * d).max())
        np.testing.assert_allclose(float(stats.lr), lr, rtol=1e-12)
        assert float(stats.constraint_scale) == 1.0
        np.testing.assert_allclose(float(stats.update_norm), np.linalg.norm(delta), rtol=1e-10)
        np.testing.assert_allclose(float(stats.clip_fraction), 2 / N_WALKERS)
    step_sample, step_dense = (theta - _flat(out[k][0]) for k in ("sample", "dense"))
    np.testing.assert_allclose(step_sample, step_dense, rtol=0,
                               atol=1e-8 * np.abs(step_dense).max())
    assert np.abs(step_dense).max() > 1e-6


def test_norm_constraint_limits_the_step(x64):
    ansatz, params, walkers, e_l, jac = _setup()
    d, g, o = _reference_direction(e_l, 5.0, jac, params, walkers)
    lr = 0.1
    c = 1e-3 * lr ** 2 * (g @ d)          # far below the unconstrained lr² ĝᵀd
    update, _ = _update("sample", c, 5.0)
    new, _, stats = update(params, (), walkers, e_l, 0)
    s = float(stats.constraint_scale)
    np.testing.assert_allclose(s, np.sqrt(c / (lr ** 2 * (g @ d))), rtol=1e-8)
    assert s < 0.05
    delta = _flat(params) - _flat(new)
    np.testing.assert_allclose(delta, lr * s * d, rtol=0, atol=1e-8 * np.abs(lr * s * d).max())
    np.testing.assert_allclose(float(stats.update_norm), np.linalg.norm(delta), rtol=1e-10)
    # lr² s² ĝᵀd = C, i.e. the step has length √C in the metric F + λI
    np.testing.assert_allclose(lr ** 2 * s ** 2 * (g @ d), c, rtol=1e-8)
    np.testing.assert_allclose(delta @ (o.T @ (o @ delta)) + DAMPING * delta @ delta, c,
                               rtol=1e-8)
    # a generous C leaves the step alone; no C at all too
    assert float(norm_constraint_scale(g @ d, lr, 1e6 * c)) == 1.0
    assert float(norm_constraint_scale(g @ d, lr, None)) == 1.0


def test_clip_local_energy_follows_ferminet_rule(x64):
    e = np.array([-1.0, -1.2, -0.8, -1.1, -0.9, -1.05, -0.95, 3.0, -7.0, -1.0])
    median, mad = -1.0, 1.07        # by hand: Σ|e − median| = 0.2·2 + 0.1·2 + 0.05·2 + 4 + 6
    assert np.median(e) == median and np.mean(np.abs(e - median)) == pytest.approx(mad)
    width = 5 * mad
    clipped, frac = clip_local_energy(jnp.asarray(e), 5.0)
    expected = np.clip(e, median - width, median + width)
    np.testing.assert_allclose(np.asarray(clipped), expected, rtol=1e-14)
    assert expected[8] == pytest.approx(-6.35) and expected[7] == 3.0   # only −7 is outside
    assert float(frac) == pytest.approx(0.1)
    # a narrower width clips both outliers and nothing else
    clipped, frac = clip_local_energy(jnp.asarray(e), 1.0)
    np.testing.assert_allclose(np.asarray(clipped)[[7, 8]], [-1 + mad, -1 - mad], rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(clipped)[:7], e[:7])
    assert float(frac) == pytest.approx(0.2)
    # clip None: unchanged, nothing reported
    clipped, frac = clip_local_energy(jnp.asarray(e), None)
    np.testing.assert_array_equal(np.asarray(clipped), e)
    assert float(frac) == 0.0


def test_sample_sr_of_a_float32_network_is_the_same_in_column_chunks(x64, monkeypatch):
    """A float32 network's O is multiplied in float64 column chunks at scale: with chunks of
    3 columns (the last overlapping its predecessor) the update equals the one-chunk update,
    and both equal a numpy float64 solve with the same float32 Ō."""
    import vmc.optim.sr as sr
    mol = make_molecule([{"symbol": "Li", "position": [0.0, 0.0, 0.0]}], "bohr", 0, 1)
    ansatz = make_ansatz(AnsatzConfig(hidden_one=(5, 5), hidden_two=(2, 2), determinants=1),
                         mol, jnp.float32)
    params = jax.jit(ansatz.init)(jax.random.PRNGKey(3))
    walkers = jax.random.normal(jax.random.PRNGKey(4), (N_WALKERS, 3, 3), jnp.float32)
    e_l = -7.4 + 0.3 * jax.random.normal(jax.random.PRNGKey(5), (N_WALKERS,), jnp.float64)
    cfg = OptimConfig(lr=0.1, lr_decay_steps=100.0, damping=DAMPING, norm_constraint=None,
                      clip=None)

    def step():   # jitted as in a run (op by op it compiled ~450 small programs: ~40 s)
        update = make_direct_sr(cfg, ansatz.log_psi, "sample").update
        new, _, _ = jax.jit(lambda p, w, e: update(p, (), w, e, 0))(params, walkers, e_l)
        return _flat(params).astype(np.float64) - _flat(new).astype(np.float64)

    whole = step()
    monkeypatch.setattr(sr, "_CHUNK_ELEMENTS", 3 * N_WALKERS)
    p = _flat(params).size
    assert p % 3 != 0 and p > 100          # several chunks, the last one overlapping
    chunked = step()
    o = np.asarray(jax.jit(lambda p, w: centred_jacobian(ansatz.log_psi, p, w)[0])(
        params, walkers), np.float64)
    eps = np.asarray(centred_energies(e_l))
    d = o.T @ np.linalg.solve(o @ o.T + DAMPING * np.eye(N_WALKERS), eps)
    scale = np.abs(0.1 * d).max()
    assert scale > 1e-4
    # the applied step is rounded to float32 parameters: compare at float32 resolution
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6 * scale + 1e-6)
    np.testing.assert_allclose(whole, 0.1 * d, rtol=0, atol=1e-4 * scale + 1e-6)


def test_jacobian_in_walker_chunks_equals_all_at_once(x64):
    """optim.jacobian_chunk: O from chunks of 5 walkers (32 = 6·5 + 2: a remainder chunk)
    equals O of all walkers at once, block by block, and so does the sample-SR update."""
    from vmc.optim.sr import jacobian_blocks
    mol = make_molecule([{"symbol": "Li", "position": [0.0, 0.0, 0.0]}], "bohr", 0, 1)
    ansatz = make_ansatz(AnsatzConfig(hidden_one=(5, 5), hidden_two=(2, 2), determinants=1),
                         mol, jnp.float64)
    params = jax.jit(ansatz.init)(jax.random.PRNGKey(3))
    walkers = jax.random.normal(jax.random.PRNGKey(4), (N_WALKERS, 3, 3), jnp.float64)
    whole = jax.jit(lambda p, w: jacobian_blocks(ansatz.log_psi, p, w))(params, walkers)
    parts = jax.jit(lambda p, w: jacobian_blocks(ansatz.log_psi, p, w, 5))(params, walkers)
    assert len(whole) == len(parts) > 1
    for a, b in zip(whole, parts):
        assert a.shape == b.shape and a.shape[0] == N_WALKERS
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-14)
    e_l = -7.4 + 0.3 * jax.random.normal(jax.random.PRNGKey(5), (N_WALKERS,), jnp.float64)

    def step(chunk):
        cfg = OptimConfig(lr=0.1, damping=DAMPING, jacobian_chunk=chunk)
        update = make_direct_sr(cfg, ansatz.log_psi, "sample").update
        return _flat(jax.jit(lambda p: update(p, (), walkers, e_l, 0)[0])(params))
    np.testing.assert_allclose(step(5), step(None), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("n", [7, 8, 37, 256])
def test_symmetric_gram_equals_the_full_product(x64, n):
    """The row-block Gram (upper blocks only, the rest mirrored) is o oᵀ, also when n is
    not a multiple of the block count, and symmetric exactly."""
    from vmc.optim.sr import symmetric_gram
    o = jnp.asarray(np.random.default_rng(n).normal(size=(n, 301)))
    g = np.asarray(symmetric_gram(o))
    full = np.asarray(o @ o.T)
    np.testing.assert_allclose(g, full, rtol=1e-12, atol=1e-12 * np.abs(full).max())
    # entries of different row blocks are copies of one product: exactly symmetric
    from vmc.optim.sr import GRAM_ROW_BLOCKS as b
    block = np.searchsorted([round(i * n / b) for i in range(1, b)], np.arange(n), "right")
    apart = block[:, None] != block[None, :]
    if n >= 2 * b:
        np.testing.assert_array_equal(g[apart], g.T[apart])
