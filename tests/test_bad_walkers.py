"""One bad walker never poisons a step; evaluation never crashes on a sample.

Float64 unit checks: for every solver, an update whose walker 0 has a NaN local energy (and a
NaN position, so its O is NaN too) and is masked out equals the update computed on the other
walkers alone. Then the jitted training step with one NaN walker keeps the step and counts it,
and `vmc run` with NaN local energies injected into training and evaluation exits 0 with the
counts in train.h5, eval.h5 and summary.json.
"""

import json
import os
import pathlib
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc import h5io
from vmc.ansatz import make_ansatz
from vmc.config import AnsatzConfig, OptimConfig, config_from_dict
from vmc.optim import REGISTRY, make_optimizer
from vmc.system import make_molecule
from vmc.train import build, init_state, make_train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_W = 16


@pytest.fixture(scope="module", autouse=True)
def _float64_module():
    with jax.enable_x64(True):
        yield


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


@pytest.fixture(scope="module")
def li():
    mol = make_molecule([{"symbol": "Li", "position": [0.0, 0.0, 0.0]}], "bohr", 0, 1)
    acfg = AnsatzConfig(hidden_one=(6, 6), hidden_two=(3, 3), determinants=2, jastrow=True)
    ansatz = make_ansatz(acfg, mol, jnp.float64)
    params = jax.jit(ansatz.init)(jax.random.PRNGKey(0))
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    walkers = jax.random.normal(k1, (N_W, 3, 3), jnp.float64)
    e_l = -7.4 + 0.3 * jax.random.normal(k2, (N_W,), jnp.float64)
    return ansatz, params, walkers, e_l


@pytest.mark.parametrize("solver", sorted(REGISTRY))
def test_masked_walker_is_left_out_of_every_solver(li, solver):
    ansatz, params, walkers, e_l = li
    cfg = OptimConfig(solver=solver, lr=0.05, lr_decay_steps=1e15, damping=1e-3,
                      norm_constraint=1e-3, clip=5.0, cg_maxiter=5, cg_tol=1e-12)
    # (5 CG iterations: far from convergence at λ = 1e-3, CG amplifies round-off over
    # hundreds of iterations; masking itself is exact)
    extra = {"module": ansatz.module} if solver in ("kfac", "kfac-cg") else {}
    opt = make_optimizer(cfg, ansatz.log_psi, **extra)
    state = opt.init(params)
    # walker 0: NaN energy; for the solvers that form O explicitly also a NaN position (its O
    # is then NaN: the mask must stop 0 * NaN); the others get it replaced by vmc.train first
    explicit_o = solver in ("sample", "dense", "spring")
    bad_x = walkers.at[0].set(jnp.nan) if explicit_o else walkers
    bad_e = e_l.at[0].set(0.0)
    mask = jnp.arange(N_W) > 0
    masked = jax.jit(lambda p, s, w, e, m: opt.update(p, s, w, e, 0, mask=m))
    plain = jax.jit(lambda p, s, w, e: opt.update(p, s, w, e, 0))
    new_m, _, stats_m = masked(params, state, bad_x, bad_e, mask)
    new_p, _, stats_p = plain(params, state, walkers[1:], e_l[1:])
    assert np.all(np.isfinite(_flat(new_m)))
    d_p, d_m = _flat(new_p) - _flat(params), _flat(new_m) - _flat(params)
    assert np.linalg.norm(d_p) > 0
    # round-off only (dense: a p x p Cholesky at λ = 1e-3); a walker left in would differ
    # by O(1/N_W)
    assert np.linalg.norm(d_m - d_p) <= 1e-6 * np.linalg.norm(d_p)
    np.testing.assert_allclose(float(stats_m.clip_fraction), float(stats_p.clip_fraction))


def _h2_setup(solver="sample"):
    cfg = config_from_dict(
        {"atoms": [{"symbol": "H", "position": [0.0, 0.0, -0.7]},
                   {"symbol": "H", "position": [0.0, 0.0, 0.7]}],
         "optim": {"solver": solver}, "run": {"x64": True}}, name="H2", preset="tiny")
    return build(cfg)


def test_training_step_keeps_a_step_with_one_nan_walker():
    setup = _h2_setup()
    state = init_state(setup, jax.random.PRNGKey(0))
    step = make_train_step(setup)
    key = jax.random.PRNGKey(3)
    new, stats = step(state, key, 0, jnp.asarray(1, jnp.int32))
    clean, clean_stats = step(state, key, 0, jnp.asarray(0, jnp.int32))
    assert float(stats.bad_walkers) == 1.0 and float(clean_stats.bad_walkers) == 0.0
    assert np.isfinite(float(stats.energy)) and np.isfinite(float(stats.median))
    assert np.all(np.isfinite(_flat(new.params)))
    assert not np.allclose(_flat(new.params), _flat(state.params))
    # walker 0 was put back where it stood before the step; the others moved as without NaN
    np.testing.assert_array_equal(np.asarray(new.mcmc.walkers[0]),
                                  np.asarray(state.mcmc.walkers[0]))
    np.testing.assert_array_equal(np.asarray(new.mcmc.walkers[1:]),
                                  np.asarray(clean.mcmc.walkers[1:]))
    assert np.all(np.isfinite(np.asarray(new.mcmc.logabs)))
    # the energy is the mean over the other walkers
    e = np.asarray(setup.batched_local_energy(state.params, clean.mcmc.walkers))
    np.testing.assert_allclose(float(stats.energy), e[1:].mean(), rtol=1e-12)


def test_rejected_step_returns_its_input_state():
    """The step itself keeps params, optimizer state and walkers when it rejects (so the
    loop can queue the next step before reading the stats): all walkers NaN rejects, more
    than run.max_bad_walkers of them rejects, fewer does not."""
    setup = _h2_setup()
    state = init_state(setup, jax.random.PRNGKey(0))
    n_w = state.mcmc.walkers.shape[0]
    key = jax.random.PRNGKey(3)
    leaves = lambda s: [np.asarray(x) for x in jax.tree_util.tree_leaves(s)]
    for max_bad, poison, kept in [(None, n_w, True), (0.1, n_w // 4, True),
                                  (0.5, n_w // 4, False)]:
        step = make_train_step(setup, max_bad_walkers=max_bad)
        new, stats = step(state, key, 0, jnp.asarray(poison, jnp.int32))
        assert float(stats.bad_walkers) == poison
        same = all(np.array_equal(a, b) for a, b in zip(leaves(new), leaves(state)))
        assert same == kept, (max_bad, poison)
        if not kept:
            assert not np.allclose(_flat(new.params), _flat(state.params))


def _vmc(args, env):
    e = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run([sys.executable, "-m", "vmc.cli", *args], env=e, capture_output=True,
                          text=True)


H2 = str(ROOT / "tests" / "data" / "h2_tiny.yaml")
TINY = ["--preset", "tiny", "--set", "optim.steps=8", "--set", "eval.steps=16",
        "--set", "sampler.burn_in=0", "--set", "run.x64=true"]


def test_run_with_nan_walkers_in_training_and_evaluation(tmp_path):
    run = tmp_path / "run"
    proc = _vmc(["run", H2, "--out", str(run), *TINY],
                {"VMC_FAULT_INJECT": "nan_walkers=1@2,5"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = h5io.read_stats(run / "train.h5")
    np.testing.assert_array_equal(stats["bad_walkers"], [0, 0, 1, 0, 0, 1, 0, 0])
    assert stats["rejected"][-1] == 0 and np.all(np.isfinite(stats["energy"]))

    run2 = tmp_path / "run2"
    proc = _vmc(["run", H2, "--out", str(run2), *TINY],
                {"VMC_FAULT_INJECT": "eval_nan_walkers=3@all"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run2 / "summary.json").read_text())
    assert np.isfinite(summary["energy_ha"])
    assert summary["nonfinite_samples"] == 3 * 16
    assert summary["nonfinite_fraction"] == pytest.approx(3 / 32)
    assert summary["reliable"] is False and "eval.max_nonfinite_fraction" in \
        summary["reliability_note"]
    with h5py.File(run2 / "eval.h5", "r") as f:
        np.testing.assert_array_equal(f["eval_000/nonfinite"][()], np.full(16, 3.0))
    assert "unreliable" in proc.stdout + proc.stderr
    analyze = subprocess.run([sys.executable, "-m", "vmc.cli", "analyze", str(run2), "--no-plots"],
                             capture_output=True, text=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert analyze.returncode == 0, analyze.stderr[-2000:]
    assert "48 non-finite local energies" in analyze.stdout and "UNRELIABLE" in analyze.stdout
