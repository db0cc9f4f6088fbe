"""Contract tests of the scalable SR solvers (cg, kfac, kfac-cg, spring, nystrom-cg) against
direct solves (nystrom-cg's own contracts: tests/test_nystrom.py).

Float64 throughout. Two kinds of wavefunction: a tiny FermiNet for Li (3 electrons, both spin
blocks, Jastrow on; 32 walkers at random positions, synthetic local energies: the contracts
do not need a sampled distribution), compiled once per solver; and small flax toys whose O is
known in closed form (cheap to compile). Directions are read off the update with η = 1, no
decay and no norm constraint: d = θ − θ'.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc import checkpoint as ckpt
from vmc.ansatz import make_ansatz
from vmc.config import AnsatzConfig, OptimConfig
from vmc.errors import InputError
from vmc.optim import REGISTRY, make_optimizer
from vmc.optim.kfac_capture import discover_layers, make_statistics
from vmc.optim.sr import (centred_energies, centred_jacobian, energy_gradient,
                          sample_space_direction)
from vmc.system import make_molecule

from helpers import TwoLayer, toy_batch

N_W = 32
LAMBDA = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _float64_module():
    """Module-scoped float64 (the cached setups below outlive one test's x64 fixture)."""
    with jax.enable_x64(True):
        yield


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _cfg(solver, **kw):
    base = dict(solver=solver, lr=1.0, lr_decay_steps=1e15, damping=LAMBDA,
                norm_constraint=None, clip=None)
    return OptimConfig(**{**base, **kw})


class _Case:
    """Li FermiNet, walkers, energies and the exact Ō, ε, ĝ (numpy float64)."""

    def __init__(self):
        mol = make_molecule([{"symbol": "Li", "position": [0.0, 0.0, 0.0]}], "bohr", 0, 1)
        acfg = AnsatzConfig(hidden_one=(6, 6), hidden_two=(3, 3), determinants=2, jastrow=True)
        self.ansatz = make_ansatz(acfg, mol, jnp.float64)
        self.params = jax.jit(self.ansatz.init)(jax.random.PRNGKey(0))
        k1, k2 = jax.random.split(jax.random.PRNGKey(1))
        self.walkers = jax.random.normal(k1, (N_W, 3, 3), jnp.float64)
        self.e_l = -7.4 + 0.3 * jax.random.normal(k2, (N_W,), jnp.float64)
        obar = jax.jit(lambda p, w: centred_jacobian(self.ansatz.log_psi, p, w)[0])(
            self.params, self.walkers)
        self.obar = np.asarray(obar)
        self.eps = np.asarray(centred_energies(self.e_l))
        self.g = self.obar.T @ self.eps

    def dense(self, damping=LAMBDA):
        f = self.obar.T @ self.obar + damping * np.eye(self.obar.shape[1])
        return np.linalg.solve(f, self.g), f

    def optimizer(self, cfg):
        kw = {"module": self.ansatz.module} if cfg.solver in ("kfac", "kfac-cg") else {}
        return make_optimizer(cfg, self.ansatz.log_psi, **kw)

    @functools.lru_cache(maxsize=None)
    def run(self, cfg, again=False):
        """(direction d (p,), state, stats) of one update; `again`: a second update of the
        same parameters and walkers from the first one's optimizer state."""
        opt = self.optimizer(cfg)
        update = jax.jit(opt.update)
        new, state, stats = update(self.params, opt.init(self.params), self.walkers,
                                   self.e_l, 0)
        if again:
            new, state, stats = update(self.params, state, self.walkers, self.e_l, 1)
        return _flat(self.params) - _flat(new), state, stats


@pytest.fixture(scope="module")
def case():
    return _Case()


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ------------------------------------------------------------------------------ FermiNet
def test_cg_reaches_tolerance_then_equals_dense_and_warm_starts(x64, case):
    tol = 1e-10
    cfg = _cfg("cg", cg_tol=tol, cg_maxiter=1000)
    d, state, stats = case.run(cfg)
    d_ref, f = case.dense()
    assert 0 < int(stats.iterations) < 1000
    assert float(stats.residual) <= tol
    assert np.linalg.norm(f @ d - case.g) / np.linalg.norm(case.g) <= 10 * tol
    # ‖d − d*‖ ≤ ‖(F + λI)⁻¹‖ ‖r‖ ≤ tol ‖ĝ‖ / λ
    assert np.linalg.norm(d - d_ref) <= 10 * tol * np.linalg.norm(case.g) / LAMBDA
    assert _rel(d, d_ref) < 1e-6
    np.testing.assert_allclose(np.asarray(state.direction), d, rtol=1e-12, atol=1e-14)
    # warm start: the same system again starts at the solution
    _, _, stats2 = case.run(cfg, again=True)
    assert int(stats2.iterations) <= 2 < int(stats.iterations)


def test_spring_mu0_equals_sample(x64, case):
    d, state, _ = case.run(_cfg("spring", spring_mu=0.0))
    d_ref = np.asarray(sample_space_direction(jnp.asarray(case.obar), jnp.asarray(case.eps),
                                              LAMBDA))
    assert _rel(d, d_ref) < 1e-10
    np.testing.assert_allclose(np.asarray(state.phi), d, rtol=1e-12, atol=1e-15)


def _kron_matrix(params, state, damping=LAMBDA):
    """The damped block-diagonal Kronecker/diagonal matrix of a KfacState, in ravel order,
    and the ravel indices of the diagonal (non-Dense) parameters."""
    from jax.flatten_util import ravel_pytree
    flat, unravel = ravel_pytree(params)
    p = flat.size
    idx = jax.tree_util.tree_map(lambda x: np.asarray(x).round().astype(int),
                                 unravel(jnp.arange(p, dtype=flat.dtype)))
    m = np.zeros((p, p))
    covered = np.zeros(p, bool)
    root = np.sqrt(damping)
    for name in state.a:
        node = idx["params"]
        for part in name.split("."):
            node = node[part]
        w_idx = node["kernel"]
        if "bias" in node:
            w_idx = np.vstack([w_idx, node["bias"][None, :]])
        w_idx = w_idx.ravel()                                     # vec(W̃), row-major
        a, b = np.asarray(state.a[name]), np.asarray(state.b[name])
        pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(b) / b.shape[0]))
        m[np.ix_(w_idx, w_idx)] = np.kron(a + pi * root * np.eye(a.shape[0]),
                                          b + root / pi * np.eye(b.shape[0]))
        covered[w_idx] = True
    diag_idx = _flat(jax.tree_util.tree_map(lambda i, d: i, _sub(idx, state.diag), state.diag))
    m[diag_idx, diag_idx] = _flat(state.diag) + damping
    covered[diag_idx] = True
    assert covered.all()
    return m, diag_idx


def _sub(tree, like):
    """The part of `tree` (nested dicts) with the keys of `like`."""
    if isinstance(like, dict):
        return {k: _sub(tree[k], v) for k, v in like.items()}
    return tree


def test_kfac_equals_dense_solve_of_its_kronecker_matrix(x64, case):
    d, state, _ = case.run(_cfg("kfac"))
    m, diag_idx = _kron_matrix(case.params, state)
    assert _rel(d, np.linalg.solve(m, case.g)) < 1e-10
    assert set(state.a) == {"layer_0.one", "layer_0.two", "layer_1.one", "orbital_up",
                            "orbital_down"}
    # envelopes (π, σ: 2 spins × 6 orbitals each) and the 2 Jastrow α: exact centred diagonal
    assert len(diag_idx) == 2 * 2 * 6 + 2
    np.testing.assert_allclose(_flat(state.diag), np.sum(case.obar ** 2, axis=0)[diag_idx],
                               rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------ toys
class _Linear(nn.Module):
    """log|ψ| = θ · (first n coordinates of x): O = x.ravel()[:n] is known exactly."""
    n: int = 2
    n_up: int = 1
    n_down: int = 0

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(1, use_bias=False, name="w", param_dtype=jnp.float64)(x.ravel()[:self.n])
        return jnp.ones((), x.dtype), y[0]


def _exact(log_psi, params, x, e_l, damping=LAMBDA):
    """(Ō, ε, ĝ, F + λI) in numpy."""
    obar = np.asarray(jax.jit(lambda p, xx: centred_jacobian(log_psi, p, xx)[0])(params, x))
    eps = np.asarray(centred_energies(e_l))
    return obar, eps, obar.T @ eps, obar.T @ obar + damping * np.eye(obar.shape[1])


def _step(cfg, log_psi, params, x, e_l, module=None, state=None):
    """(d = (θ − θ')/η (p,), state, stats) of one jitted update."""
    opt = make_optimizer(cfg, log_psi, **({"module": module} if "kfac" in cfg.solver else {}))
    state = opt.init(params) if state is None else state
    new, state, stats = jax.jit(opt.update)(params, state, x, e_l, 0)
    return (_flat(params) - _flat(new)) / cfg.lr, state, stats


def test_cg_iteration_cap_and_loose_tolerance(x64):
    log_psi, params, x, e_l = toy_batch(_Linear(n=12), 16, 4)
    _, _, g, f = _exact(log_psi, params, x, e_l)
    _, _, stats = _step(_cfg("cg", cg_tol=1e-14, cg_maxiter=3), log_psi, params, x, e_l)
    assert int(stats.iterations) == 3 and float(stats.residual) > 1e-14
    d, _, stats = _step(_cfg("cg", cg_tol=1e-2, cg_maxiter=100), log_psi, params, x, e_l)
    assert 0 < int(stats.iterations) < 12 and float(stats.residual) <= 1e-2
    np.testing.assert_allclose(np.linalg.norm(f @ d - g) / np.linalg.norm(g),
                               float(stats.residual), rtol=1e-6)


def test_spring_recursion(x64):
    """φ_k = μ φ_{k−1} + Ōᵀ(ŌŌᵀ + λI)⁻¹(ε − μ Ō φ_{k−1}) over two steps, n_w < p."""
    mu, n_w = 0.7, 8
    log_psi, params, x, e_l = toy_batch(_Linear(n=12), n_w, 4)
    _, _, x2, e_l2 = toy_batch(_Linear(n=12), n_w, 4, seed=1)
    cfg = _cfg("spring", spring_mu=mu)
    d1, state, _ = _step(cfg, log_psi, params, x, e_l)
    d2, _, _ = _step(cfg, log_psi, params, x2, e_l2, state=state)
    phi = np.zeros(12)
    for xx, ee, d in ((x, e_l, d1), (x2, e_l2, d2)):
        o, eps, _, _ = _exact(log_psi, params, xx, ee)
        phi = mu * phi + o.T @ np.linalg.solve(o @ o.T + LAMBDA * np.eye(n_w), eps - mu * o @ phi)
        np.testing.assert_allclose(d, phi, rtol=1e-9, atol=1e-12)


def test_kfac_expand_rule_factors_and_gradient(x64):
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 5, 3)
    layers = discover_layers(log_psi, params, 3)
    assert [(ly.name, ly.d_in, ly.d_out, ly.bias, ly.uses) for ly in layers] == [
        ("hidden", 3, 4, True, 3), ("out", 4, 2, True, 3)]
    eps = centred_energies(e_l)
    stats = jax.jit(make_statistics(log_psi, layers))(params, x, eps)
    p = params["params"]
    xa = np.asarray(x)
    h = np.tanh(xa @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    a = np.concatenate([xa, np.ones((5, 3, 1))], -1)                    # ã: (n_w, S, 4)
    b = np.broadcast_to(np.array([1.0, -0.5]), (5, 3, 2))               # ∂log|ψ|/∂y_out
    np.testing.assert_allclose(stats.a["hidden"], np.einsum("nsi,nsj->ij", a, a) / 15,
                               rtol=1e-12)
    b_hidden = (b @ np.asarray(p["out"]["kernel"]).T) * (1 - h ** 2)
    np.testing.assert_allclose(stats.b["hidden"],
                               np.einsum("nsi,nsj->ij", b_hidden, b_hidden) / 5, rtol=1e-12)
    a_out = np.concatenate([h, np.ones((5, 3, 1))], -1)
    np.testing.assert_allclose(stats.a["out"], np.einsum("nsi,nsj->ij", a_out, a_out) / 15,
                               rtol=1e-12)
    np.testing.assert_allclose(stats.b["out"], np.einsum("nsi,nsj->ij", b, b) / 5, rtol=1e-12)
    g_ref = jax.jit(energy_gradient, static_argnums=0)(log_psi, params, x, eps)["params"]
    for name in ("hidden", "out"):
        g = np.asarray(stats.grad[0][name])
        np.testing.assert_allclose(g[:-1], g_ref[name]["kernel"], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(g[-1], g_ref[name]["bias"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(stats.grad[1][("params", "alpha")], g_ref["alpha"], rtol=1e-10)
    o_alpha = -np.sum(xa ** 2, axis=(1, 2))
    np.testing.assert_allclose(stats.diag[("params", "alpha")], np.var(o_alpha), rtol=1e-12)


def test_kfac_shared_rows_factors_by_blocks_equal_the_broadcast_inputs(case, monkeypatch):
    """FermiNet's one-electron layers (SharedRowsDense): factors, ĝ and Ḡ summed by blocks
    equal those of the input with its shared rows broadcast to every row (the nn.Dense it
    stands for), with walkers masked out; and ĝ is the exact Ōᵀε of the good walkers."""
    from vmc.optim import kfac_capture
    log_psi = case.ansatz.log_psi
    layers = discover_layers(log_psi, case.params, 3)
    shared = [ly.name for ly in layers if ly.name.endswith(".one")]
    assert shared and all(ly.uses == 3 for ly in layers if ly.name in shared)
    mask = jnp.arange(N_W) % 5 != 2
    eps = centred_energies(case.e_l, mask)
    blocks = jax.jit(make_statistics(log_psi, layers))(case.params, case.walkers, eps, mask)
    monkeypatch.setattr(kfac_capture, "_recorded_input", kfac_capture._dense_input)
    broadcast = jax.jit(make_statistics(log_psi, layers))(case.params, case.walkers, eps,
                                                          mask)
    for name in shared:
        for field in ("a", "mean"):
            x, y = getattr(blocks, field)[name], getattr(broadcast, field)[name]
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(blocks.grad[0][name], broadcast.grad[0][name],
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(blocks.activations[name][0],
                                   broadcast.activations[name][0], rtol=0, atol=0)
    g_exact = jax.jit(energy_gradient, static_argnums=0)(log_psi, case.params, case.walkers,
                                                        eps, mask)["params"]
    for name in shared:
        layer, kind = name.split(".")
        g = np.asarray(blocks.grad[0][name])
        np.testing.assert_allclose(g[:-1], g_exact[layer][kind]["kernel"], rtol=1e-9,
                                   atol=1e-13)
        np.testing.assert_allclose(g[-1], g_exact[layer][kind]["bias"], rtol=1e-9, atol=1e-13)


def test_kfac_moving_average_and_inverse_refresh(x64):
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 16, 3)
    _, _, x2, e_l2 = toy_batch(module, 16, 3, seed=1)
    cfg = _cfg("kfac", kfac_cov_ema=0.9, kfac_inverse_every=2)
    d1, s1, _ = _step(cfg, log_psi, params, x, e_l, module)
    m1, _ = _kron_matrix(params, s1)
    assert _rel(d1, np.linalg.solve(m1, _exact(log_psi, params, x, e_l)[2])) < 1e-10
    d2, s2, _ = _step(cfg, log_psi, params, x2, e_l2, module, state=s1)
    _, s3, _ = _step(cfg, log_psi, params, x2, e_l2, module, state=s2)
    assert (int(s1.count), int(s2.count), int(s3.count)) == (1, 2, 3)
    layers = discover_layers(log_psi, params, 3)
    st2 = jax.jit(make_statistics(log_psi, layers))(params, x2, centred_energies(e_l2))
    for name in s1.a:
        for f1, f2, new in ((s1.a, s2.a, st2.a), (s1.b, s2.b, st2.b)):
            np.testing.assert_allclose(f2[name], 0.9 * f1[name] + 0.1 * new[name], rtol=1e-12)
        # refreshed every 2nd update: update 2 still used update 1's factors, update 3 not
        np.testing.assert_array_equal(s2.a_chol[name], s1.a_chol[name])
        assert not np.allclose(s3.a_chol[name], s1.a_chol[name])
    # update 2: the new gradient with the first update's inverses
    assert _rel(d2, np.linalg.solve(m1, _exact(log_psi, params, x2, e_l2)[2])) < 1e-10


@pytest.mark.parametrize("centred", [False, True])
def test_kfac_triangular_solves_equal_products_with_explicit_inverses(x64, centred):
    """`precondition` by the Cholesky factors' triangular solves gives A_λ⁻¹ Ĝ B_λ⁻¹ with the
    inverses of the damped factors formed explicitly (plus the Sherman–Morrison term when
    centred), and it is the dense solve with the Kronecker matrix of the state (uncentred)."""
    from vmc.optim.kfac import damped_factors, precondition
    from vmc.optim.kfac_capture import merge_params
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 16, 3)
    cfg = _cfg("kfac", kfac_centring="walker" if centred else "none")
    _, state, _ = _step(cfg, log_psi, params, x, e_l, module)
    layers = discover_layers(log_psi, params, 3)
    grad = jax.jit(make_statistics(log_psi, layers))(params, x, centred_energies(e_l)).grad
    by_solve = precondition(state, grad, centred)
    assert np.asarray(state.count) == 1          # the factors are this batch's (no EMA yet)
    for name, g in grad[0].items():
        da, db = damped_factors(state.a[name], state.b[name], LAMBDA)
        want = np.linalg.inv(da) @ np.asarray(g) @ np.linalg.inv(db)
        if centred:
            u, c, delta = state.mean_inv[name], state.weight[name], state.denominator[name]
            np.testing.assert_allclose(u, np.linalg.inv(da) @ np.asarray(state.mean[name])
                                       @ np.linalg.inv(db), rtol=1e-9, atol=1e-14)
            if delta > 1e-3:
                want = want + c * np.vdot(u, g) / delta * np.asarray(u)
        np.testing.assert_allclose(by_solve[0][name], want, rtol=1e-9, atol=1e-14)
    if not centred:
        m, _ = _kron_matrix(params, state)
        flat_g = _flat(merge_params(layers, *grad))
        assert _rel(_flat(merge_params(layers, *by_solve)), np.linalg.solve(m, flat_g)) < 1e-10


def test_kfac_schema2_checkpoint_resumes_with_the_same_preconditioner(tmp_path, monkeypatch):
    """Checkpoints of schema ≤ 2 hold KFAC's damped inverses (a_inv, b_inv); schema 3 their
    Cholesky factors (a_chol, b_chol). `stages.restore` reads an old file in its own layout
    and converts: the factors are the ones the inverses came from (to 1e-9 relative), so
    the resumed preconditioner is the same. The new template alone rejects the old file."""
    import pathlib

    from vmc import stages
    from vmc.config import load_config
    from vmc.loop import save_checkpoint
    from vmc.optim.kfac import KfacState, kron_solve
    from vmc.optim.kfac_schema import KfacStateSchema2
    from vmc.train import build, init_state

    cfg = load_config(pathlib.Path(__file__).parent.parent / "systems" / "H2.yaml",
                      preset="tiny", overrides=("optim.solver=kfac", "pretrain.steps=0"))
    setup = build(cfg, hf=None)
    fresh = init_state(setup, jax.random.PRNGKey(0))
    e_l = jax.random.normal(jax.random.PRNGKey(1), (cfg.sampler.walkers,))
    _, kstate, _ = jax.jit(setup.optimizer.update)(fresh.params, fresh.opt_state,
                                                   fresh.mcmc.walkers, e_l, 0)
    assert isinstance(kstate, KfacState)
    inv = lambda l: np.linalg.inv(np.asarray(l) @ np.asarray(l).T)  # noqa: E731
    old = KfacStateSchema2(*kstate)._replace(
        a_inv={k: inv(v) for k, v in kstate.a_chol.items()},
        b_inv={k: inv(v) for k, v in kstate.b_chol.items()})
    monkeypatch.setattr(ckpt, "SCHEMA_VERSION", 2)
    path = save_checkpoint(tmp_path, fresh._replace(opt_state=old), 7, cfg, keep=1)
    monkeypatch.undo()
    assert ckpt.read_attrs(path)["schema_version"] == 2
    with pytest.raises(ckpt.CheckpointError, match="does not match"):
        ckpt.restore(path, {"opt_state": kstate})
    lines = []
    restored, step, _ = stages.restore(setup, tmp_path, lines.append)
    got = restored.opt_state
    assert step == 7 and isinstance(got, KfacState) and any("Cholesky" in m for m in lines)
    rng = np.random.default_rng(0)
    for name, l in kstate.a_chol.items():
        np.testing.assert_allclose(got.a_chol[name], l, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.b_chol[name], kstate.b_chol[name], rtol=1e-9,
                                   atol=1e-12)
        g = rng.normal(size=(l.shape[0], kstate.b_chol[name].shape[0]))
        np.testing.assert_allclose(kron_solve(got.a_chol[name], got.b_chol[name], g),
                                   old.a_inv[name] @ g @ old.b_inv[name], rtol=1e-8)
    for a, b in zip(jax.tree_util.tree_leaves(got.a), jax.tree_util.tree_leaves(kstate.a)):
        np.testing.assert_array_equal(a, b)


def test_kfac_cg_zero_iterations_equals_scaled_kfac_and_tight_equals_dense(x64):
    """0 iterations: x₀ = α M⁻¹ĝ with α = ĝᵀd_K / d_Kᵀ(F + λI)d_K (the quadratic's minimum
    along KFAC's direction d_K); to a tight tolerance: the dense SR solve."""
    module = TwoLayer()
    log_psi, params, x, e_l = toy_batch(module, 16, 3)
    _, _, g, f = _exact(log_psi, params, x, e_l)
    d_kfac, _, _ = _step(_cfg("kfac"), log_psi, params, x, e_l, module)
    d0, _, stats = _step(_cfg("kfac-cg", cg_maxiter=0), log_psi, params, x, e_l, module)
    assert int(stats.iterations) == 0
    alpha = (g @ d_kfac) / (d_kfac @ f @ d_kfac)
    assert abs(alpha - 1.0) > 1e-3                   # the scaling is not the identity here
    np.testing.assert_allclose(d0, alpha * d_kfac, rtol=1e-10, atol=1e-15)
    tol = 1e-12
    d, _, stats = _step(_cfg("kfac-cg", cg_tol=tol, cg_maxiter=500, nystrom_rank=2), log_psi,
                        params, x, e_l, module)
    assert 2 < int(stats.iterations) < 500 and float(stats.residual) <= tol
    assert np.linalg.norm(f @ d - g) / np.linalg.norm(g) <= 10 * tol
    assert _rel(d, np.linalg.solve(f, g)) < 1e-8
    # its preconditioner is a Nyström sketch of this batch: with ℓ ≥ rank F = n_w − 1 it is
    # exact on F's range and the identity on the λ-cluster, so PCG needs ≤ 2 iterations
    d2, _, stats2 = _step(_cfg("kfac-cg", cg_tol=1e-8, cg_maxiter=500, nystrom_rank=16),
                          log_psi, params, x, e_l, module)
    assert 1 <= int(stats2.iterations) <= 2 < int(stats.iterations)
    assert _rel(d2, np.linalg.solve(f, g)) < 1e-5


@pytest.mark.parametrize("solver", ["sample", "dense", "cg", "spring", "kfac", "kfac-cg",
                                    "nystrom-cg"])
def test_norm_constraint_bounds_step_in_solver_metric(x64, solver):
    """η² s² dᵀ(F̂ + λI)d = C when active (s < 1), s = 1 otherwise, on a 2-parameter
    quadratic with O = (x₁, x₂): F̂ = F exact, or KFAC's (A + π√λ) ⊗ (B + √λ/π) with
    A = E[O Oᵀ] (uncentred) and B = E[1] = 1."""
    module = _Linear(n=2)
    log_psi, params, x, e_l = toy_batch(module, 16, 1)
    o = np.asarray(x[:, 0, :2])
    obar, eps, g, curv = _exact(log_psi, params, x, e_l)
    np.testing.assert_allclose(obar, (o - o.mean(0)) / 4.0, rtol=1e-14)
    if solver == "kfac":
        a = o.T @ o / 16
        pi = np.sqrt(np.trace(a) / 2)
        curv = (a + pi * np.sqrt(LAMBDA) * np.eye(2)) * (1 + np.sqrt(LAMBDA) / pi)
    d = np.linalg.solve(curv, g)
    eta = 0.3
    for c_ratio in (0.01, 100.0):
        c = c_ratio * eta ** 2 * g @ d
        cfg = _cfg(solver, lr=eta, norm_constraint=c, spring_mu=0.0, cg_tol=1e-13,
                   cg_maxiter=50)
        step, _, stats = _step(cfg, log_psi, params, x, e_l, module)
        step = eta * step
        if c_ratio < 1:    # active
            assert float(stats.constraint_scale) < 1
            np.testing.assert_allclose(step @ curv @ step, c, rtol=1e-9)
        else:              # inactive: step = η d
            assert float(stats.constraint_scale) == 1.0
            np.testing.assert_allclose(step, eta * d, rtol=1e-9)


# ------------------------------------------------------------------------------ state
@pytest.mark.parametrize("solver", sorted(REGISTRY))
def test_state_is_checkpointable_array_pytree(x64, case, solver, tmp_path):
    cfg = _cfg(solver, lr=1e-3 if solver == "adam" else 1.0)
    opt = case.optimizer(cfg)
    state = opt.init(case.params)
    out = jax.eval_shape(opt.update, case.params, state, case.walkers, case.e_l, 0)[1]
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(state)):
        assert isinstance(b, jax.Array) and (a.shape, a.dtype) == (b.shape, b.dtype)
    ckpt.save(tmp_path / "ckpt_000001.h5", {"opt_state": state}, {"step": 1})
    trees, _ = ckpt.restore(tmp_path / "ckpt_000001.h5", {"opt_state": state})
    for a, b in zip(jax.tree_util.tree_leaves(trees["opt_state"]),
                    jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_construction_errors(x64, case):
    with pytest.raises(InputError, match="flax ansatz"):
        make_optimizer(_cfg("kfac"), case.ansatz.log_psi)
    with pytest.raises(InputError, match="optim.damping"):
        make_optimizer(_cfg("spring", damping=0.0), case.ansatz.log_psi)
    with pytest.raises(InputError, match="optim.damping"):
        make_optimizer(_cfg("kfac-cg", damping=0.0), case.ansatz.log_psi,
                       module=case.ansatz.module)
