"""Psiformer and FermiNet: antisymmetry, forward Laplacian against the Hessian, Jastrow cusps.

All in float64. Parameters are perturbed away from their initial values (the full envelope
starts as the identity and would otherwise equal the isotropic one).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc.ansatz import make_ansatz
from vmc.ansatz.common import Jastrow
from vmc.config import AnsatzConfig
from vmc.hamiltonian import kinetic_from_logabs
from vmc.system import make_molecule

# LiH⁻ with spin 1: 3 up + 2 down electrons, so both spin channels hold a same-spin pair and
# the blocks differ in size.
MOL = make_molecule([{"symbol": "Li", "position": [0.0, 0.0, 0.0]},
                     {"symbol": "H", "position": [0.3, -0.2, 3.015]}], charge=-1, spin=1)
SMALL = {"ferminet": dict(hidden_one=(8, 8), hidden_two=(4, 4)),
         "psiformer": dict(heads=2, head_dim=4, layers=2)}


def _perturb(params, key, scale=0.1):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def _ansatz(name, **kw):
    cfg = dataclasses.replace(AnsatzConfig(name=name, determinants=2), **SMALL[name], **kw)
    ansatz = make_ansatz(cfg, MOL, jnp.float64)
    params = jax.jit(lambda k: _perturb(ansatz.init(k), jax.random.fold_in(k, 1)))(
        jax.random.PRNGKey(0))
    return ansatz, params


def _walker(seed=2):
    centres = np.asarray(MOL.positions)[[0, 0, 1, 0, 0]]
    return jnp.asarray(centres + np.random.default_rng(seed).normal(size=(5, 3)))


def _swap(x, i, j):
    return x.at[jnp.array([i, j])].set(x[jnp.array([j, i])])


# Each option value appears at least once per ansatz (the full cross product is 4x slower).
CASES = [("ferminet", dict(jastrow=False, envelope="isotropic", full_det=True)),
         ("ferminet", dict(jastrow=True, envelope="full", full_det=False)),
         ("psiformer", dict(jastrow=False, envelope="isotropic", full_det=True)),
         ("psiformer", dict(jastrow=True, envelope="full", full_det=False)),
         ("psiformer", dict(jastrow=True, envelope="full", full_det=True, layer_norm=True))]


@pytest.mark.parametrize("name,options", CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={w}" for k, w in v.items()))
def test_antisymmetry_and_forward_laplacian(x64, name, options):
    ansatz, params = _ansatz(name, **options)
    x = _walker()
    log_psi = jax.jit(ansatz.log_psi)
    sign, logabs = log_psi(params, x)
    assert np.isfinite(logabs)
    for i, j in ((0, 1), (1, 2), (3, 4)):            # up-up and down-down exchanges
        s2, l2 = log_psi(params, _swap(x, i, j))
        assert float(s2) == -float(sign)
        np.testing.assert_allclose(float(l2), float(logabs), rtol=0, atol=1e-10)

    def f(y):
        return ansatz.log_psi(params, y)[1]

    forward = float(jax.jit(lambda y: kinetic_from_logabs(f, y, "forward"))(x))
    hessian = float(jax.jit(lambda y: kinetic_from_logabs(f, y, "hessian"))(x))
    assert abs(forward - hessian) <= 1e-8 * abs(hessian)


def test_psiformer_orbital_shapes_and_spin_feature(x64):
    ansatz, params = _ansatz("psiformer", full_det=False)
    mats = jax.jit(ansatz.orbitals)(params, _walker())
    assert [m.shape for m in mats] == [(2, 3, 3), (2, 2, 2)]
    full, pf = _ansatz("psiformer", full_det=True)
    assert [m.shape for m in jax.jit(full.orbitals)(pf, _walker())] == [(2, 5, 5)]
    # The spin feature makes the state not antisymmetric under an up-down exchange.
    x = _walker()
    log_psi = jax.jit(full.log_psi)
    s1, l1 = log_psi(pf, x)
    s2, l2 = log_psi(pf, _swap(x, 0, 3))
    assert abs(float(l1) - float(l2)) > 1e-6


def test_psiformer_weight_matrices_are_dense_kernels(x64):
    """Every weight matrix outside the envelopes is an nn.Dense kernel (KFAC captures those)."""
    ansatz, params = _ansatz("psiformer", layer_norm=True, jastrow=True)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [getattr(k, "key", str(k)) for k in path]
        if leaf.ndim >= 2 and not names[-2].startswith("envelope"):
            assert names[-1] == "kernel", names


def _jastrow(n_up, alpha_par, alpha_anti):
    module = Jastrow(n_up, jnp.float64)
    params = {"params": {"alpha_parallel": jnp.asarray(alpha_par),
                         "alpha_antiparallel": jnp.asarray(alpha_anti)}}
    return lambda x: module.apply(params, x)


def _slope(fn, x, i, j, direction, r=1e-7):
    """∂/∂r of fn with electron j at x_i + r·direction."""
    def g(rr):
        return fn(x.at[j].set(x[i] + rr * direction))
    return float(jax.grad(g)(jnp.asarray(r)))


@pytest.mark.parametrize("alpha", [1.0, 0.37, 2.5])
def test_jastrow_cusp_two_electrons(x64, alpha):
    x = jnp.asarray([[0.1, 0.2, -0.3], [1.0, 0.0, 0.0]])
    e = jnp.asarray([0.6, 0.0, 0.8])
    anti = _jastrow(1, 1.3, alpha)          # one up, one down
    par = _jastrow(2, alpha, 1.3)           # two up
    assert abs(_slope(anti, x, 0, 1, e) - 0.5) < 1e-6
    assert abs(_slope(par, x, 0, 1, e) - 0.25) < 1e-6


def test_jastrow_cusp_many_electrons(x64):
    """With other electrons present the smooth part cancels in the two-sided average."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))
    fn = _jastrow(3, 0.8, 1.7)
    e = jnp.asarray([0.0, 0.6, -0.8])
    for (i, j), c in (((0, 3), 0.5), ((0, 2), 0.25), ((3, 4), 0.25)):
        avg = 0.5 * (_slope(fn, x, i, j, e) + _slope(fn, x, i, j, -e))
        assert abs(avg - c) < 1e-5


def test_psiformer_antiparallel_cusp_of_log_psi(x64):
    """Kato cusp of the whole wavefunction: the determinants are smooth and non-zero at an
    up–down coalescence, so the spherical average of ∂log|ψ|/∂r_ij there is the Jastrow's ½."""
    ansatz, params = _ansatz("psiformer", jastrow=True)
    x = _walker()

    @jax.jit
    def fn(y):
        return ansatz.log_psi(params, y)[1]

    slopes = [0.5 * (_slope(fn, x, 1, 3, e) + _slope(fn, x, 1, 3, -e))
              for e in jnp.eye(3)]
    np.testing.assert_allclose(slopes, 0.5, atol=1e-5)
