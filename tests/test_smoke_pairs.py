"""Every ansatz with every solver: one optimizer update, a checkpoint round trip and a short
evaluation per pair (in this process), `vmc run` end to end for three pairs, and the pairs
refused by design refused with exit code 2 and one line.

The He atom (systems/He.yaml) with a tiny network, float32 as in a default run (float64
switched on as the CLI does). The trainable ansätze start untrained, so their energies only
have to be physical: finite, not below the exact energy by more than the noise
(variational principle), and below -0.3 Ha (untrained they sit at -0.7 to -1.1 Ha, above
He⁺ + e⁻ at -2 Ha; a wavefunction that binds nothing or a broken energy fails). The 'hf'
ansatz has no parameters: `vmc run`
skips training (no update for any solver), and its VMC energy must match PySCF's
Hartree–Fock energy in the same basis. Compilations are shared where the code allows: one
burn-in step, one initial state, one local energy and one evaluation per ansatz, so that a
pair compiles only its optimizer update; the subprocess runs use the same persistent
compilation cache as this process.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc import analysis, checkpoint as ckpt, h5io, precheck, stages
from vmc.cli import main
from vmc.config import load_config
from vmc.evaluate import evaluate
from vmc.optim import REGISTRY
from vmc.sampler import init_walkers, make_sampler
from vmc.train import TrainState, build, make_burn_in_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
HE = ROOT / "systems" / "He.yaml"
HE_EXACT = -2.903724377034
TINY = ("ansatz.hidden_one=[4]", "ansatz.hidden_two=[2]", "ansatz.determinants=1",
        "ansatz.heads=1", "ansatz.head_dim=4", "ansatz.layers=1", "sampler.walkers=16",
        "sampler.moves=1", "sampler.burn_in=20", "pretrain.basis=sto-3g", "optim.steps=2",
        "eval.steps=16", "eval.burn_in=0", "run.progress=false", "run.log_every=1")
ANSATZE = ("ferminet", "psiformer", "hf")
REFUSED = {("hf", s) for s in precheck.NEEDS_MODULE}   # kfac needs a flax network
PAIRS = [(a, s) for a in ANSATZE for s in REGISTRY if (a, s) not in REFUSED]
CLI_PAIRS = [("ferminet", "kfac"), ("psiformer", "spring"), ("hf", "sample")]


def _overrides(ansatz, solver):
    return TINY + (f"ansatz.name={ansatz}", f"optim.solver={solver}")


def _cfg(ansatz, solver):
    return load_config(HE, overrides=_overrides(ansatz, solver))


@pytest.fixture(scope="module", autouse=True)
def _float64_available():
    """As the CLI: float64 available, the network in float32 (run.x64 false)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def hartree_fock():
    """RHF/sto-3g of He, once for the module (the hf ansatz and the reference for it)."""
    return precheck.hartree_fock(_cfg("hf", "sample"), log=lambda m: None)


@pytest.fixture(scope="module")
def start(hartree_fock):
    """Per ansatz: burned-in parameters and walkers, the setup and the walkers' local
    energies (one burn-in and one E_L compilation each)."""
    cache = {}

    def get(ansatz):
        if ansatz not in cache:
            setup = build(_cfg(ansatz, "sample"), hf=hartree_fock)
            k_params, k_walkers = jax.random.split(stages.run_keys(0)["init"])
            params = jax.jit(setup.ansatz.init)(k_params)   # one compilation, not op by op
            walkers = init_walkers(k_walkers, setup.molecule, 16, 1.0, setup.dtype)
            mcmc = make_sampler(setup.ansatz.log_psi, 1)[0](params, walkers, 0.2)
            burn = make_burn_in_step(setup)
            for t in range(setup.cfg.sampler.burn_in):
                mcmc, _ = burn(params, mcmc, jax.random.PRNGKey(t))
            e_l = jax.jit(setup.batched_local_energy)(params, mcmc.walkers)
            cache[ansatz] = (params, mcmc, setup, e_l)
        return cache[ansatz]
    return get


def _leaves_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), "restored leaf differs"


def _check_energy(energies, ansatz, e_hf):
    """Finite per-step energies whose mean is physical for the ansatz."""
    energies = np.asarray(energies)
    assert energies.shape == (16,) and np.all(np.isfinite(energies))
    rb = analysis.reblock(energies)
    if ansatz == "hf":   # VMC of the HF determinant: PySCF's energy in the same basis
        assert rb.stderr < 0.1, rb
        assert abs(rb.mean - e_hf) < 5 * rb.stderr + 0.02, (rb.mean, rb.stderr, e_hf)
    else:                # untrained: variational and bound
        assert HE_EXACT - 5 * rb.stderr - 0.02 < rb.mean < -0.3, (rb.mean, rb.stderr)
    return rb


# the pairs of one ansatz run on one worker (pyproject: loadgroup): its burn-in, initial
# state and evaluation compile once, not once per worker
@pytest.mark.parametrize("ansatz,solver", [
    pytest.param(a, s, id=f"{a}-{s}", marks=pytest.mark.xdist_group(f"smoke-{a}"))
    for a, s in PAIRS])
def test_update_checkpoint_and_evaluation(ansatz, solver, start, hartree_fock, tmp_path):
    cfg = _cfg(ansatz, solver)
    setup = build(cfg, hf=hartree_fock)
    params, mcmc, eval_setup, e_l = start(ansatz)
    state = TrainState(params, setup.optimizer.init(params), mcmc)
    if precheck.trains(cfg):
        # one optimizer update, as the training step calls it, on the shared walkers and
        # local energies (sampling and E_L do not depend on the solver; the whole step of
        # every solver runs in tests/test_resume.py and, for three pairs, `vmc run` below)
        update = jax.jit(lambda p, o, w, e: setup.optimizer.update(
            p, o, w, e, 0, mask=jnp.isfinite(e)))
        new_params, new_opt, ostats = update(state.params, state.opt_state, mcmc.walkers, e_l)
        new = TrainState(new_params, new_opt, mcmc)
        assert np.all(np.isfinite(np.asarray(e_l)))
        assert HE_EXACT - 1.0 < float(np.mean(np.asarray(e_l, np.float64))) < 0
        assert np.isfinite(float(ostats.update_norm)) and float(ostats.update_norm) > 0
        moved = [not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(params),
                                                          jax.tree_util.tree_leaves(new.params))]
        assert any(moved), "the update changed no parameter"
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(new.params))
        path = tmp_path / "ckpt_000001.h5"
        ckpt.save(path, {"params": new.params, "opt_state": new.opt_state, "mcmc": new.mcmc},
                  {"step": 1})
        trees, attrs = ckpt.restore(path, {"params": state.params, "opt_state": state.opt_state,
                                           "mcmc": state.mcmc})
        restored = TrainState(trees["params"], trees["opt_state"], trees["mcmc"])
        assert attrs["step"] == 1
    else:   # hf: nothing to train; the run's own path writes a step-0 checkpoint
        assert params == {} and stages.count(params) == 0
        new, done = stages.without_training(setup, state, tmp_path, False,
                                            stages.run_keys(0), lambda m: None, ["setup"])
        assert done == 0 and new.params == {}
        assert h5io.read_stats(tmp_path / "train.h5") == {}
        restored, step, rejected = stages.restore(setup, tmp_path, lambda m: None)
        assert (step, rejected) == (0, 0)
    _leaves_equal(restored, new)
    # the evaluation does not depend on the solver: one compiled evaluation per ansatz
    # (evaluate keeps its jitted steps on the setup), run on this pair's restored state
    res = evaluate(eval_setup, restored.params, restored.mcmc.walkers,
                   float(restored.mcmc.width), steps=16, burn_in=0, key=jax.random.PRNGKey(2))
    assert 0.05 < float(np.mean(res.pmove)) < 0.99
    _check_energy(res.energy, ansatz, hartree_fock.energy)


@pytest.mark.parametrize("solver", sorted(precheck.NEEDS_MODULE))
@pytest.mark.parametrize("command", ["run", "check"])
def test_refused_pairs_exit_2_with_one_line(solver, command, tmp_path, capsys):
    before = jax.config.jax_enable_x64
    out = tmp_path / "run"
    argv = [command, str(HE), "--set", "ansatz.name=hf", "--set", f"optim.solver={solver}"]
    try:
        code = main(argv + (["--out", str(out)] if command == "run" else []))
    finally:
        jax.config.update("jax_enable_x64", before)
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured
    for word in ("error: optim.solver", repr(solver), "ansatz.name 'hf'",
                 "valid with hf: sample, dense, adam, cg, spring"):
        assert word in lines[0], (word, lines[0])
    assert not out.exists()


def test_vmc_run_end_to_end_for_three_pairs(tmp_path, hartree_fock):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("VMC_FAULT_INJECT", None)
    procs = {}
    for ansatz, solver in CLI_PAIRS:
        out = tmp_path / f"{ansatz}-{solver}"
        argv = [sys.executable, "-m", "vmc.cli", "run", str(HE), "--out", str(out)]
        for item in _overrides(ansatz, solver):
            argv += ["--set", item]
        procs[(ansatz, solver)] = (out, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT, text=True))
    for (ansatz, solver), (out, proc) in procs.items():
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, log[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["ansatz"], summary["solver"]) == (ansatz, solver)
        assert summary["reference_ha"] == HE_EXACT and summary["eval_steps"] == 16
        energies = h5io.read_stats(out / "eval.h5", group="eval_000")["energy"]
        rb = _check_energy(energies, ansatz, hartree_fock.energy)
        assert abs(summary["energy_ha"] - rb.mean) < 1e-12
        steps = [ckpt.read_attrs(p)["step"] for p in ckpt.list_checkpoints(out / "checkpoints")]
        stats = h5io.read_stats(out / "train.h5")
        if ansatz == "hf":
            assert steps == [0] and stats == {} and summary["n_params"] == 0
            assert "no parameters, so no pretraining or optimization" in log
        else:
            assert steps == [2] and list(stats["step"]) == [0, 1]
            assert np.all(np.isfinite(stats["energy"])) and summary["n_params"] > 0
