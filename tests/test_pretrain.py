"""Hartree–Fock pretraining: the fit improves, both spin blocks are fitted, rows are logged."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc import h5io
from vmc.config import config_from_dict
from vmc.hf import eval_orbitals, run_hf
from vmc.pretrain import hf_targets, pretrain, pretrain_loss
from vmc.train import build, init_state

LIH = [{"symbol": "Li", "position": [0.0, 0.0, 0.0]},
       {"symbol": "H", "position": [0.0, 0.0, 3.015]}]
LI = [{"symbol": "Li", "position": [0.0, 0.0, 0.0]}]


@functools.lru_cache(maxsize=None)
def _setup(atoms_key, spin, full_det, steps, ansatz="ferminet"):
    atoms = {"LiH": LIH, "Li": LI}[atoms_key]
    cfg = config_from_dict({"atoms": atoms, "spin": spin}, name=atoms_key, preset="tiny",
                           overrides=(f"ansatz.name={ansatz}", "ansatz.heads=2",
                                      "ansatz.head_dim=8", "ansatz.jastrow=true",
                                      f"ansatz.full_det={str(full_det).lower()}",
                                      "ansatz.hidden_one=[16, 16]", "sampler.walkers=64",
                                      f"pretrain.steps={steps}", "pretrain.lr=0.01",
                                      "sampler.moves=4"))
    setup = build(cfg)
    hf = run_hf(setup.molecule, cfg.pretrain.basis, cfg.pretrain.method)
    return setup, hf


def _block_errors(setup, hf, params, walkers):
    """Mean squared error per orbital block, averaged over walkers."""
    n_up = setup.molecule.n_up

    @jax.jit
    def errs(params):
        def one(x):
            mats = setup.ansatz.orbitals(params, x)
            tg = hf_targets(hf, x, n_up, [m.shape for m in mats])
            return jnp.stack([jnp.sum((m - t[None]) ** 2) for m, t in zip(mats, tg)])
        return jnp.mean(jax.vmap(one)(walkers), axis=0)
    return np.asarray(errs(params))


def _run(tmp_path, atoms_key, spin, full_det, steps, pass_hf=True, ansatz="ferminet"):
    """Pretrain from a fresh state; without `pass_hf` pretrain runs PySCF itself."""
    setup, hf = _setup(atoms_key, spin, full_det, steps, ansatz)
    setup = dataclasses.replace(setup, hf=hf if pass_hf else None)
    state0 = init_state(setup, jax.random.PRNGKey(0))
    lines = []
    state = pretrain(setup, state0, jax.random.PRNGKey(1), tmp_path, lines.append)
    return setup, hf, state0, state, lines


def test_pretrain_lih_full_det_fits_hf(tmp_path):
    steps = 100
    setup, hf, state0, state, lines = _run(tmp_path, "LiH", 0, True, steps, pass_hf=False)
    stats = h5io.read_stats(tmp_path / "train.h5", "pretrain")
    assert len(stats["step"]) == steps
    np.testing.assert_array_equal(stats["step"], np.arange(steps))
    loss = stats["loss"]
    assert np.all(np.isfinite(loss))
    assert np.mean(loss[-10:]) < 0.3 * loss[0], (loss[0], loss[-10:])
    # On the final walkers, the pretrained orbitals are much closer to HF's than the initial.
    walkers = state.mcmc.walkers
    before = float(pretrain_loss(setup.ansatz.orbitals, hf, 2, state0.params, walkers))
    after = float(pretrain_loss(setup.ansatz.orbitals, hf, 2, state.params, walkers))
    assert after < 0.3 * before
    # The returned state: walkers carry the network's log|ψ|, the optimizer state is fresh.
    logabs = jax.vmap(lambda x: setup.ansatz.log_psi(state.params, x)[1])(walkers)
    np.testing.assert_allclose(np.asarray(state.mcmc.logabs), np.asarray(logabs), rtol=1e-5,
                               atol=1e-5)
    fresh = setup.optimizer.init(state.params)
    assert (jax.tree_util.tree_structure(state.opt_state)
            == jax.tree_util.tree_structure(fresh))
    assert any("RHF/cc-pvdz" in line for line in lines), lines


def test_pretrain_li_block_dets_fits_both_spins(tmp_path):
    steps = 100
    setup, hf, state0, state, _ = _run(tmp_path, "Li", 1, False, steps)
    assert (setup.molecule.n_up, setup.molecule.n_down) == (2, 1)
    shapes = [m.shape for m in setup.ansatz.orbitals(state.params, state.mcmc.walkers[0])]
    assert shapes == [(2, 2, 2), (2, 1, 1)]
    before = _block_errors(setup, hf, state0.params, state.mcmc.walkers)
    after = _block_errors(setup, hf, state.params, state.mcmc.walkers)
    assert after.shape == (2,)
    assert np.all(after < 0.3 * before), (before, after)
    assert len(h5io.read_stats(tmp_path / "train.h5", "pretrain")["step"]) == steps


def test_pretrain_psiformer_lih(tmp_path):
    steps = 60
    setup, hf, state0, state, _ = _run(tmp_path, "LiH", 0, True, steps, ansatz="psiformer")
    assert setup.cfg.ansatz.name == "psiformer"
    loss = h5io.read_stats(tmp_path / "train.h5", "pretrain")["loss"]
    assert len(loss) == steps and np.all(np.isfinite(loss))
    assert np.mean(loss[-5:]) < 0.3 * loss[0], (loss[0], loss[-5:])


def test_full_det_target_is_block_diagonal(x64):
    setup, hf = _setup("Li", 1, True, 1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)))
    (target,) = hf_targets(hf, x, 2, [(2, 3, 3)])
    up, down = eval_orbitals(hf, x)
    np.testing.assert_allclose(target[:2, :2], up[:2])
    np.testing.assert_allclose(target[2:, 2:], down[2:])
    assert np.all(np.asarray(target[:2, 2:]) == 0) and np.all(np.asarray(target[2:, :2]) == 0)
    with pytest.raises(ValueError, match="fit neither"):
        hf_targets(hf, x, 2, [(2, 1, 1), (2, 2, 2)])


def test_pretrain_blocks_compose_step_by_step():
    """A block of 3 steps equals blocks of 2 and 1 (the loop's last block may be shorter,
    and an odd count ends on one even step): same walkers, parameters and losses."""
    from vmc.pretrain import PretrainState, make_pretrain_block
    setup, hf = _setup("LiH", 0, False, 5)
    state0 = init_state(setup, jax.random.PRNGKey(0))
    tx, block = make_pretrain_block(setup, hf, setup.cfg.pretrain.lr)
    ps = PretrainState(state0.params, tx.init(state0.params), state0.mcmc)
    key = jax.random.PRNGKey(7)
    whole, losses, _ = block(ps, key, 0, 3)
    part, first, _ = block(ps, key, 0, 2)
    part, second, _ = block(part, key, 2, 1)
    np.testing.assert_allclose(np.asarray(whole.mcmc.walkers), np.asarray(part.mcmc.walkers),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(losses),
                               np.concatenate([first, second]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(whole.params),
                    jax.tree_util.tree_leaves(part.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert losses.shape == (3,) and np.all(np.isfinite(np.asarray(losses)))
    assert float(jnp.max(jnp.abs(whole.mcmc.walkers - ps.mcmc.walkers))) > 0


def test_pretrain_skips_a_non_finite_gradient():
    """A walker whose orbitals are not finite makes the loss's gradient NaN: its entries are
    taken as 0, so the parameters stay exactly as they were (fresh Adam state), where
    without the guard they would turn NaN; the other walkers still move."""
    from vmc.pretrain import PretrainState, make_pretrain_block
    from vmc.sampler import MCMCState
    setup, hf = _setup("LiH", 0, False, 5)
    state0 = init_state(setup, jax.random.PRNGKey(0))
    tx, block = make_pretrain_block(setup, hf, setup.cfg.pretrain.lr)
    key = jax.random.PRNGKey(7)
    good = PretrainState(state0.params, tx.init(state0.params), state0.mcmc)
    after, losses, _ = block(good, key, 0, 3)   # the programs of the test above
    assert np.all(np.isfinite(np.asarray(losses)))
    moved = jax.tree_util.tree_leaves(after.params)[0] - jax.tree_util.tree_leaves(good.params)[0]
    assert float(jnp.max(jnp.abs(moved))) > 0
    walkers = state0.mcmc.walkers.at[3].set(jnp.nan)
    bad = good._replace(mcmc=MCMCState(walkers, good.mcmc.logabs, good.mcmc.width))
    after, losses, _ = block(bad, key, 0, 3)
    assert np.all(np.isnan(np.asarray(losses)))
    for a, b in zip(jax.tree_util.tree_leaves(after.params),
                    jax.tree_util.tree_leaves(good.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the other walkers still move
    rest = np.arange(walkers.shape[0]) != 3
    assert np.all(np.isfinite(np.asarray(after.mcmc.walkers)[rest]))
    assert float(jnp.max(jnp.abs(after.mcmc.walkers[rest] - walkers[rest]))) > 0


def test_pretrain_sampling_hf_moves_walkers_under_hartree_fock_only():
    """pretrain.sampling=hf (FermiNet's scf_fraction 1): the walkers' path does not depend on
    the network, so two different parameter sets move the same walkers identically; with
    the default 'alternate' the network's moves make the paths part."""
    from vmc.pretrain import PretrainState, make_pretrain_block
    setup, hf = _setup("LiH", 0, False, 5)
    state_a = init_state(setup, jax.random.PRNGKey(0))
    params_b = init_state(setup, jax.random.PRNGKey(5)).params
    key = jax.random.PRNGKey(7)
    walkers = {}
    for sampling in ("hf", "alternate"):
        cfg = dataclasses.replace(setup.cfg, pretrain=dataclasses.replace(
            setup.cfg.pretrain, sampling=sampling))
        tx, block = make_pretrain_block(dataclasses.replace(setup, cfg=cfg), hf, 0.01)
        for name, params in (("a", state_a.params), ("b", params_b)):
            ps = PretrainState(params, tx.init(params), state_a.mcmc)
            walkers[sampling, name] = np.asarray(block(ps, key, 0, 4)[0].mcmc.walkers)
    assert np.max(np.abs(walkers["hf", "a"] - state_a.mcmc.walkers)) > 0       # they moved
    np.testing.assert_array_equal(walkers["hf", "a"], walkers["hf", "b"])
    assert np.max(np.abs(walkers["alternate", "a"] - walkers["alternate", "b"])) > 1e-3
