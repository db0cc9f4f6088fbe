"""VMC of the Hartree–Fock determinant (`ansatz.name: hf`) reproduces PySCF's HF energy.

The ansatz goes through `vmc.train.build` and `vmc.evaluate.evaluate` exactly as in a run
(float32 network, energy averaged in float64). Gaussian orbitals break the e–n cusp, so E_L
has heavy tails (variance 5–30 Ha² for Be and LiH/cc-pVDZ): here ~3e5 samples give a
reblocked standard error of several mHa, and the check is |E_VMC − E_HF| ≤ 3σ with σ bounded
(so the test is not vacuous). The 1 mHa version, ~1e7 samples per molecule, is
scripts/hf_vmc_check.py.

These checks are bound by sampling, not compilation, so each runs in a child process at XLA's
default CPU optimization level (the suite's level 0, conftest, doubles their sampling time:
cold, one core, 144 s against 78 s for the three).
"""

import subprocess
import sys

import jax
import pytest

from helpers import xla_env
from vmc import analysis
from vmc.config import config_from_dict
from vmc.evaluate import evaluate
from vmc.sampler import init_walkers
from vmc.train import build

MOLECULES = {
    "Be": [{"symbol": "Be", "position": [0.0, 0.0, 0.0]}],
    "LiH": [{"symbol": "Li", "position": [0.0, 0.0, 0.0]},
            {"symbol": "H", "position": [0.0, 0.0, 3.015]}],
}
# PySCF RHF/cc-pVDZ (LiH as in tests/test_hf.py).
HF_ENERGY = {"Be": -14.5723376, "LiH": -7.9836186}


def _in_child_at_default_opt(check: str, *args: str):
    """Run `check(*args)` of this module in a fresh process at XLA's default optimization
    level (the suite's other flags and compilation cache kept); its assertion, if any, fails
    the test with the child's output."""
    proc = subprocess.run([sys.executable, __file__, check, *args],
                          env=xla_env("--xla_backend_optimization_level"),
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["Be", "LiH"])
def test_hf_vmc_energy_matches_pyscf(name):
    _in_child_at_default_opt("check_hf_vmc_energy", name)


def check_hf_vmc_energy(name):
    # x64 only makes float64 available, as the CLI does: the network runs in float32
    # (run.x64 false) and evaluate averages E_L in float64.
    walkers, steps = 2048, 120
    cfg = config_from_dict({"atoms": MOLECULES[name]}, name=name,
                           overrides=("ansatz.name=hf", "pretrain.basis=cc-pvdz",
                                      "hamiltonian.f64_rescue=0",
                                      "sampler.moves=8", f"sampler.walkers={walkers}"))
    setup = build(cfg)
    assert abs(setup.hf.energy - HF_ENERGY[name]) < 1e-6
    key = jax.random.PRNGKey(7)
    w = init_walkers(jax.random.fold_in(key, 0), setup.molecule, walkers, 1.0, setup.dtype)
    res = evaluate(setup, {}, w, 0.3, steps=steps, burn_in=40, key=jax.random.fold_in(key, 1))
    assert 0.3 < res.pmove.mean() < 0.7
    rb = analysis.reblock(res.energy)
    dev = rb.mean - setup.hf.energy
    assert setup.dtype == jax.numpy.float32
    assert rb.stderr < 0.03, rb                        # ~2.5e5 samples: σ ≈ 10–20 mHa
    print(f"{name}: E_VMC {rb.mean:.5f} ± {1e3 * rb.stderr:.2f} mHa, E_HF {setup.hf.energy:.5f}, "
          f"dev {dev / rb.stderr:+.2f} σ, tau {rb.tau:.1f}")
    assert abs(dev) <= 3 * rb.stderr, (rb.mean, rb.stderr, setup.hf.energy)


# PySCF ROHF/ccecp-cc-pvdz with the ccECP (Bennett et al., J. Chem. Phys. 146, 204107 (2017)),
# O triplet, 6 valence electrons.
HF_O_CCECP = -15.6872492


def test_hf_vmc_ccecp_oxygen_matches_pyscf():
    _in_child_at_default_opt("check_hf_vmc_ccecp_oxygen")


def check_hf_vmc_ccecp_oxygen():
    """The hf ansatz with ccECP reproduces PySCF's HF energy with the same ECP and basis.

    The tetrahedron rule is exact here: moving one electron changes the determinant by a
    linear combination of orbitals, which on a sphere around the atom are polynomials of
    degree <= 2 in the direction (s, p, d shells), so the non-local part has no rule error.
    """
    walkers, steps = 3000, 60
    cfg = config_from_dict({"atoms": [{"symbol": "O", "position": [0.0, 0.0, 0.0]}],
                            "spin": 2}, name="O",
                           overrides=("ansatz.name=hf", "hamiltonian.ecp=ccecp",
                                      "hamiltonian.f64_rescue=0",
                                      "hamiltonian.ecp_rule=tetrahedron", "sampler.moves=10",
                                      f"sampler.walkers={walkers}"))
    assert cfg.pretrain.basis == "ccecp-cc-pvdz"
    setup = build(cfg)
    assert setup.molecule.n_electrons == 6
    assert abs(setup.hf.energy - HF_O_CCECP) < 1e-6
    key = jax.random.PRNGKey(11)
    w = init_walkers(jax.random.fold_in(key, 0), setup.molecule, walkers, 0.8, setup.dtype)
    res = evaluate(setup, {}, w, 0.4, steps=steps, burn_in=30, key=jax.random.fold_in(key, 1))
    rb = analysis.reblock(res.energy)
    dev = rb.mean - setup.hf.energy
    print(f"O/ccECP: E_VMC {rb.mean:.5f} ± {1e3 * rb.stderr:.2f} mHa, E_HF {setup.hf.energy:.5f}, "
          f"dev {dev / rb.stderr:+.2f} σ, tau {rb.tau:.1f}")
    assert rb.stderr <= 0.005, rb                      # 1.8e5 samples: σ ≈ 3–4 mHa
    assert abs(dev) <= 3 * rb.stderr, (rb.mean, rb.stderr, setup.hf.energy)


if __name__ == "__main__":
    # a child of `_in_child_at_default_opt`: float64 available as in the CLI (the network
    # stays float32), the suite's compilation cache
    from vmc.compile_cache import enable
    jax.config.update("jax_enable_x64", True)
    enable()      # VMC_JAX_CACHE and VMC_JAX_CACHE_MIN_SECONDS as conftest set them
    globals()[sys.argv[1]](*sys.argv[2:])
