"""Laplacian methods: folx's sparse forward Laplacian against the Hessian, and the Psiformer's
input features rewritten so that folx keeps its Jacobians sparse (issue #13).

Before the rewrite, `rescaled_features` guarded log(1+r)/r with `jnp.where(r > 0, …)`; the
predicate depends on x, so folx's sparse mode could not index its Jacobian masks by it,
warned "could not perform index operation select_n" and materialized every Jacobian.
"""

import dataclasses
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc.ansatz import make_ansatz, psiformer
from vmc.config import AnsatzConfig
from vmc.hamiltonian import make_local_energy, resolve_laplacian
from vmc.system import make_molecule

MOL = make_molecule([{"symbol": "Li", "position": [0.0, 0.0, 0.0]},
                     {"symbol": "H", "position": [0.3, -0.2, 3.015]}], charge=-1, spin=1)
SMALL = {"ferminet": dict(hidden_one=(8, 8), hidden_two=(4, 4)),
         "psiformer": dict(heads=2, head_dim=4, layers=2)}
ONE_LAYER = {"ferminet": dict(hidden_one=(8,), hidden_two=(4,)), "psiformer": dict(layers=1)}


def _where_features(x, atoms, smooth=(), smooth_length=1.0):
    """The pre-rewrite rescaled_features (jnp.where guard), the reference of the rewrite."""
    ae = x[:, None, :] - atoms[None, :, :]
    r_ae = psiformer.smooth_distance(ae, jnp.linalg.norm(ae, axis=-1, keepdims=True), smooth,
                                     smooth_length)
    log_r = jnp.log1p(r_ae)
    positive = r_ae > 0
    scale = jnp.where(positive, log_r / jnp.where(positive, r_ae, 1.0), 1.0)
    return jnp.concatenate([ae * scale, log_r], axis=-1).reshape(x.shape[0], -1), ae, r_ae


def _case(name, dtype, **kw):
    cfg = dataclasses.replace(AnsatzConfig(name=name, determinants=2), **{**SMALL[name], **kw})
    ansatz = make_ansatz(cfg, MOL, dtype)
    params = ansatz.init(jax.random.PRNGKey(0))
    centres = np.asarray(MOL.positions)[[0, 0, 1, 0, 0]]
    xs = centres + np.random.default_rng(2).normal(size=(3, 5, 3))
    return ansatz, params, jnp.asarray(xs, dtype)


def test_rescaled_features_equal_the_where_form_even_at_a_nucleus(x64):
    atoms = jnp.asarray(MOL.positions)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3))).at[1].set(atoms[1])
    new, old = psiformer.rescaled_features(x, atoms)[0], _where_features(x, atoms)[0]
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    assert float(new[1, 4 + 3]) == 0.0 and float(new[1, 4]) == 0.0   # electron 1 on atom H
    y = x.at[1].add(0.1)                                               # derivatives, r > 0
    jac_new = jax.jacfwd(lambda v: psiformer.rescaled_features(v, atoms)[0])(y)
    jac_old = jax.jacfwd(lambda v: _where_features(v, atoms)[0])(y)
    np.testing.assert_allclose(np.asarray(jac_new), np.asarray(jac_old), rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-11), (jnp.float32, 2e-6)])
def test_psiformer_log_psi_and_local_energy_unchanged_by_the_rewrite(x64, monkeypatch,
                                                                      dtype, rtol):
    ansatz, params, xs = _case("psiformer", dtype, jastrow=True)
    e_l = jax.jit(jax.vmap(make_local_energy(ansatz.log_psi, MOL, "forward", dtype),
                           in_axes=(None, 0)))
    logabs = jax.jit(jax.vmap(lambda x: ansatz.log_psi(params, x)[1]))
    new = np.asarray(logabs(xs)), np.asarray(e_l(params, xs))
    monkeypatch.setattr(psiformer, "rescaled_features", _where_features)
    logabs = jax.jit(jax.vmap(lambda x: ansatz.log_psi(params, x)[1]))     # retrace
    e_l = jax.jit(jax.vmap(make_local_energy(ansatz.log_psi, MOL, "forward", dtype),
                           in_axes=(None, 0)))
    old = np.asarray(logabs(xs)), np.asarray(e_l(params, xs))
    np.testing.assert_allclose(new[0], old[0], rtol=rtol)
    np.testing.assert_allclose(new[1], old[1], rtol=rtol)
    assert np.ptp(new[1]) > 1e-3                       # the walkers differ


@pytest.mark.parametrize("name", ["ferminet", "psiformer"])
def test_sparse_forward_laplacian_matches_hessian_without_materializing(x64, caplog, name):
    # one layer: folx's sparse mode compiles for 10-25 s per layer, and the features it could
    # not index (the Psiformer's select_n) enter before the first layer
    ansatz, params, xs = _case(name, jnp.float64, envelope="full", **ONE_LAYER[name])
    out = {}
    with caplog.at_level(logging.WARNING):
        for lap in ("forward-sparse", "hessian"):     # forward = hessian: test_hamiltonian
            fn = make_local_energy(ansatz.log_psi, MOL, lap, jnp.float64)
            out[lap] = np.asarray(jax.jit(jax.vmap(fn, in_axes=(None, 0)))(params, xs))
    assert not [r for r in caplog.records if "materializing" in r.getMessage()]
    np.testing.assert_allclose(out["forward-sparse"], out["hessian"], rtol=1e-9)


def test_resolve_laplacian():
    assert resolve_laplacian("hessian", "psiformer", 10) == "hessian"
    with pytest.raises(ValueError, match="forward-sparse"):
        resolve_laplacian("sparse", "ferminet", 3)


def test_auto_picks_sparse_by_ansatz_and_electrons_and_config_resolves_it():
    from vmc.config import load_config
    assert resolve_laplacian("auto", "ferminet", 9) == "forward"
    assert resolve_laplacian("auto", "ferminet", 10) == "forward-sparse"
    assert resolve_laplacian("auto", "psiformer", 2) == "forward"
    assert resolve_laplacian("auto", "psiformer", 3) == "forward-sparse"
    assert resolve_laplacian("auto", "psiformer", 30) == "forward-sparse"
    assert resolve_laplacian("auto", "hf", 30) == "forward"
    # a Psiformer of 128 attention features or more: sparse from 10 electrons, as FermiNet
    assert resolve_laplacian("auto", "psiformer", 7, width=64) == "forward-sparse"
    assert resolve_laplacian("auto", "psiformer", 7, width=128) == "forward"
    assert resolve_laplacian("auto", "psiformer", 10, width=128) == "forward-sparse"
    root = pathlib.Path(__file__).resolve().parents[1] / "systems"
    assert load_config(root / "Ne.yaml").hamiltonian.laplacian == "forward-sparse"
    assert load_config(root / "N.yaml").hamiltonian.laplacian == "forward"
    psiformer = ("ansatz.name=psiformer",)
    assert load_config(root / "Ne.yaml", overrides=psiformer
                       ).hamiltonian.laplacian == "forward-sparse"
    assert load_config(root / "Li.yaml", overrides=psiformer
                       ).hamiltonian.laplacian == "forward-sparse"
    assert load_config(root / "He.yaml", overrides=psiformer
                       ).hamiltonian.laplacian == "forward"
    wide = psiformer + ("ansatz.head_dim=32",)            # 4 heads x 32: the benchmark's
    assert load_config(root / "N.yaml", overrides=wide).hamiltonian.laplacian == "forward"
    assert load_config(root / "Ne.yaml", overrides=wide
                       ).hamiltonian.laplacian == "forward-sparse"
    # the tiny preset (tests, smoke runs: mostly compilation) sets folx dense; --set wins
    assert load_config(root / "Ne.yaml", preset="tiny").hamiltonian.laplacian == "forward"
    assert load_config(root / "Ne.yaml", preset="tiny",
                       overrides=("hamiltonian.laplacian=auto",)
                       ).hamiltonian.laplacian == "forward-sparse"
    assert load_config(root / "Ne.yaml", overrides=("hamiltonian.laplacian=hessian",)
                       ).hamiltonian.laplacian == "hessian"
