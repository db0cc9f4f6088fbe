"""Local energy against physics: hydrogen atom, Coulomb sums, PySCF, Hessian, finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params
from vmc.ansatz import make_ansatz
from vmc.config import AnsatzConfig
from vmc.hamiltonian import kinetic_from_logabs, make_local_energy, potential_energy
from vmc.system import make_molecule

LAPLACIANS = ("forward", "hessian")


def _mol(*atoms, spin=0, charge=0, units="bohr"):
    return make_molecule([{"symbol": s, "position": list(p)} for s, p in atoms],
                         units=units, spin=spin, charge=charge)


H = _mol(("H", (0.0, 0.0, 0.0)), spin=1)
LI = _mol(("Li", (0.0, 0.0, 0.0)), spin=1)
LIH = _mol(("Li", (0.0, 0.0, 0.0)), ("H", (3.015, 0.0, 0.0)))
# Geometries of shared/reference/energies.yaml (bohr).
H2O = _mol(("O", (0.0, 0.0, 0.0)), ("H", (1.43042881, 1.10715704, 0.0)),
           ("H", (-1.43042881, 1.10715704, 0.0)))
NH3 = _mol(("N", (0.0, 0.0, 0.22013)), ("H", (0.0, 1.77583, -0.51364)),
           ("H", (1.53791, -0.88791, -0.51364)), ("H", (-1.53791, -0.88791, -0.51364)))


# ---------------------------------------------------------------- hydrogen atom

@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_hydrogen_ground_state_local_energy_is_exact(x64, laplacian):
    """ψ = e^{−r} is the exact 1s state: E_L = −1/2 Ha at every point."""
    def log_psi(params, x):
        return jnp.ones(()), -jnp.linalg.norm(x[0])

    e_l = jax.jit(jax.vmap(make_local_energy(log_psi, H, laplacian, jnp.float64),
                           in_axes=(None, 0)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(scale=1.5, size=(50, 1, 3)))
    out = np.asarray(e_l({}, x))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, -0.5, rtol=0, atol=1e-10)


@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_hydrogen_excited_trial_function_is_not_an_eigenstate(x64, laplacian):
    """ψ = e^{−r/2}: E_L = −1/8 − 1/(2r) (analytic); guards against a test that always passes."""
    def log_psi(params, x):
        return jnp.ones(()), -0.5 * jnp.linalg.norm(x[0])

    e_l = jax.jit(jax.vmap(make_local_energy(log_psi, H, laplacian, jnp.float64),
                           in_axes=(None, 0)))
    rng = np.random.default_rng(1)
    x = rng.normal(scale=1.5, size=(20, 1, 3))
    r = np.linalg.norm(x[:, 0], axis=-1)
    np.testing.assert_allclose(np.asarray(e_l({}, jnp.asarray(x))), -0.125 - 0.5 / r,
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- potential energy

@pytest.mark.parametrize("name", ["LIH", "H2O", "NH3"])
def test_nuclear_repulsion_matches_pyscf(name):
    mol = globals()[name]
    ref = mol.to_pyscf("sto-3g").energy_nuc()
    assert abs(mol.nuclear_repulsion - ref) < 1e-10


@pytest.mark.parametrize("name", ["LIH", "H2O", "NH3"])
def test_local_energy_carries_pyscf_nuclear_repulsion(x64, name):
    """E_L of a Gaussian ψ = exp(−a|x|²/2) = analytic kinetic + hand-summed V + PySCF's E_nn."""
    mol = globals()[name]
    a = 0.7

    def log_psi(params, x):
        return jnp.ones(()), -0.5 * a * jnp.sum(x * x)

    rng = np.random.default_rng(2)
    x = mol.positions[rng.integers(mol.n_atoms, size=mol.n_electrons)] + rng.normal(
        size=(mol.n_electrons, 3))
    n = mol.n_electrons
    kinetic = -0.5 * (-3 * a * n + a * a * np.sum(x * x))
    v_en = -sum(z / np.linalg.norm(xi - r) for xi in x for z, r in zip(mol.charges, mol.positions))
    v_ee = sum(1.0 / np.linalg.norm(x[i] - x[j]) for i in range(n) for j in range(i))
    e_nn = mol.to_pyscf("sto-3g").energy_nuc()
    e_l = jax.jit(make_local_energy(log_psi, mol, "forward", jnp.float64))({}, jnp.asarray(x))
    np.testing.assert_allclose(float(e_l), kinetic + v_en + v_ee + e_nn, rtol=1e-12)
    v = jax.jit(potential_energy)(jnp.asarray(x), jnp.asarray(mol.positions),
                                  jnp.asarray(mol.charges), mol.nuclear_repulsion)
    np.testing.assert_allclose(float(v), v_en + v_ee + e_nn, rtol=1e-12)


def test_potential_energy_of_hand_made_configuration(x64):
    """Li (Z=3) at the origin, H at z = 4; electrons at (0,0,1) and (0,3,0).

    |e1−Li| = 1, |e1−H| = 3, |e2−Li| = 3, |e2−H| = 5, |e1−e2| = √10, |Li−H| = 4.
    """
    atoms = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    charges = jnp.asarray([3.0, 1.0])
    x = jnp.asarray([[0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    v_en = -(3 / 1 + 1 / 3 + 3 / 3 + 1 / 5)
    v_ee = 1 / np.sqrt(10.0)
    v_nn = 3 * 1 / 4
    pot = jax.jit(potential_energy)
    assert abs(float(pot(x, atoms, charges, 0.0)) - (v_en + v_ee)) < 1e-14
    assert abs(float(pot(x, atoms, charges, v_nn)) - (v_en + v_ee + v_nn)) < 1e-14
    # electron order does not matter; a third electron at (0,0,−2) adds its own terms only:
    # |e3−Li| = 2, |e3−H| = 6, |e3−e1| = 3, |e3−e2| = √13
    assert abs(float(pot(x[::-1], atoms, charges, 0.0)) - (v_en + v_ee)) < 1e-14
    x3 = jnp.concatenate([x, jnp.asarray([[0.0, 0.0, -2.0]])])
    extra = -(3 / 2 + 1 / 6) + 1 / 3 + 1 / np.sqrt(13.0)
    assert abs(float(pot(x3, atoms, charges, 0.0)) - (v_en + v_ee + extra)) < 1e-14


# ---------------------------------------------------------------- forward Laplacian vs references

CASES = [  # (molecule, full_det, envelope, jastrow): every option both ways, both molecules
    ("LIH", True, "isotropic", False),
    ("LI", False, "full", True),
]
FD_STEP = 2e-3




@functools.lru_cache(maxsize=None)
def _case(name, full_det, envelope, jastrow):
    """(jitted comparison function, params, walkers) for one float64 network.

    One jit per network keeps compile time down: the forward-Laplacian local energy, the
    forward and Hessian kinetic energies, and log|ψ| at the finite-difference points.
    """
    mol = globals()[name]
    cfg = AnsatzConfig(hidden_one=(8, 8), hidden_two=(4, 4), determinants=2,
                       full_det=full_det, envelope=envelope, jastrow=jastrow)
    with jax.enable_x64(True):
        ansatz = make_ansatz(cfg, mol, jnp.float64)
        params = random_params(ansatz, seed=1)
        rng = np.random.default_rng(3)
        x = mol.positions[rng.integers(mol.n_atoms, size=(3, mol.n_electrons))] + rng.normal(
            size=(3, mol.n_electrons, 3))
        x = jnp.asarray(x)
    e_fwd = make_local_energy(ansatz.log_psi, mol, "forward", jnp.float64)
    n3 = 3 * mol.n_electrons

    def one(p, y):
        f = lambda z: ansatz.log_psi(p, z)[1]  # noqa: E731
        unit = jnp.eye(n3, dtype=y.dtype).reshape(n3, *y.shape)
        shifts = jnp.concatenate([FD_STEP * unit, 0.5 * FD_STEP * unit])   # h and h/2
        return {"el_forward": e_fwd(p, y),
                "kin_forward": kinetic_from_logabs(f, y, "forward"),
                "kin_hessian": kinetic_from_logabs(f, y, "hessian"),
                "f0": f(y),
                "plus": jax.vmap(f)(y[None] + shifts).reshape(2, n3),
                "minus": jax.vmap(f)(y[None] - shifts).reshape(2, n3)}

    return jax.jit(jax.vmap(one, in_axes=(None, 0))), params, x, mol


def _fd_kinetic(out):
    """−½(Δf + |∇f|²) by central differences, Richardson-extrapolated from h and h/2 (O(h⁴))."""
    h = np.array([FD_STEP, 0.5 * FD_STEP])[None, :]
    lap = np.sum(out["plus"] - 2 * out["f0"][:, None, None] + out["minus"], axis=2) / h ** 2
    grad = (out["plus"] - out["minus"]) / (2 * h[..., None])
    lap = (4 * lap[:, 1] - lap[:, 0]) / 3
    grad = (4 * grad[:, 1] - grad[:, 0]) / 3
    return -0.5 * (lap + np.sum(grad ** 2, axis=1))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_forward_laplacian_matches_hessian_and_finite_differences(x64, case):
    """Forward-Laplacian kinetic energy (inside the full E_L) = Hessian reference = finite
    differences, for a FermiNet with each of full_det, envelope and Jastrow switched both ways."""
    fn, params, x, mol = _case(*case)
    out = jax.tree_util.tree_map(np.asarray, fn(params, x))
    assert out["el_forward"].dtype == np.float64
    assert np.all(np.isfinite(out["el_forward"]))
    pot = np.asarray(jax.vmap(potential_energy, in_axes=(0, None, None, None))(
        x, jnp.asarray(mol.positions), jnp.asarray(mol.charges), mol.nuclear_repulsion))
    kin_forward = out["el_forward"] - pot
    np.testing.assert_allclose(kin_forward, out["kin_forward"], rtol=1e-12)
    np.testing.assert_allclose(out["kin_forward"], out["kin_hessian"], rtol=1e-8)
    np.testing.assert_allclose(out["el_forward"], out["kin_hessian"] + pot, rtol=1e-8)
    np.testing.assert_allclose(kin_forward, _fd_kinetic(out), rtol=1e-6)
    assert np.ptp(kin_forward) > 1e-3   # the walkers are not all alike


@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_kinetic_from_logabs_of_a_shifted_gaussian(x64, laplacian):
    """f = −½|x − a|² summed over electrons: ∇f = −(x − a), Δf = −3n, so T = ½(3n − |x − a|²)."""
    a = np.array([0.3, -1.0, 0.5])
    x = np.random.default_rng(4).normal(size=(5, 3, 3))
    kin = jax.jit(jax.vmap(lambda y: kinetic_from_logabs(
        lambda z: -0.5 * jnp.sum((z - a) ** 2), y, laplacian)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(kin), 0.5 * (9 - np.sum((x - a) ** 2, axis=(1, 2))),
                               rtol=1e-12)


def test_unknown_laplacian_is_rejected():
    with pytest.raises(ValueError, match="laplacian"):
        make_local_energy(lambda p, x: (1.0, 0.0), H, "backward")


# ---------------------------------------------------------------- walker chunks

@pytest.mark.parametrize("n_devices", [1, 2])
def test_local_energy_in_walker_chunks_equals_all_at_once(x64, n_devices):
    """E_L of 10 LiH walkers in chunks of 3 (per device, remainder chunk included) is the
    vmap's E_L walker by walker: a chunking that mixed up walkers or dropped the remainder
    would differ by far more than rounding."""
    from vmc.hamiltonian import over_walkers
    ansatz = make_ansatz(AnsatzConfig(hidden_one=(8, 8), hidden_two=(4, 4), determinants=2),
                         LIH, jnp.float64)
    params = random_params(ansatz, 3)
    e_l = make_local_energy(ansatz.log_psi, LIH)
    walkers = jnp.asarray(np.random.default_rng(0).normal(size=(10, 4, 3)) + [[[1.0, 0, 0]]])
    want = np.asarray(jax.jit(over_walkers(e_l))(params, walkers))
    got = np.asarray(jax.jit(over_walkers(e_l, 3, n_devices))(params, walkers))
    assert np.all(np.isfinite(want)) and np.ptp(want) > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_chunk_rule_chunks_a_ferminet_local_energy_on_a_cpu_from_five_electrons():
    """hamiltonian.chunk_walkers null: CPU_CHUNK walkers at a time for a FermiNet on a CPU
    from CPU_CHUNK_FROM electrons on, all at once below that, for the Psiformer and on a GPU;
    a set value wins."""
    from vmc.hamiltonian import CPU_CHUNK, CPU_CHUNK_FROM, resolve_chunk
    assert resolve_chunk(None, "ferminet", CPU_CHUNK_FROM, "cpu") == CPU_CHUNK
    assert resolve_chunk(None, "ferminet", CPU_CHUNK_FROM - 1, "cpu") is None
    assert resolve_chunk(None, "psiformer", 14, "cpu") is None
    assert resolve_chunk(None, "ferminet", 14, "gpu") is None
    assert resolve_chunk(7, "ferminet", 3, "cpu") == 7
    assert resolve_chunk(512, "psiformer", 14, "gpu") == 512


def test_a_run_setup_evaluates_the_local_energy_in_the_rule_chunks(monkeypatch):
    """Setup.batched_local_energy splits the walkers as the rule says: with CPU_CHUNK
    patched to 3, a FermiNet's E_L of 8 N walkers (7 electrons) goes through lax.map in
    chunks, and equals the unchunked E_L walker by walker."""
    import vmc.hamiltonian as ham
    from vmc.config import load_config
    from vmc.train import build
    tiny = ("ansatz.hidden_one=[8,8]", "ansatz.hidden_two=[4,4]", "ansatz.determinants=2",
            "sampler.walkers=8")
    cfg = load_config("systems/N.yaml", overrides=tiny)
    assert cfg.hamiltonian.chunk_walkers is None
    monkeypatch.setattr(ham, "CPU_CHUNK", 3)
    setup = build(cfg)
    assert setup.chunk_walkers == 3
    whole = build(load_config("systems/N.yaml", overrides=tiny + (
        "hamiltonian.chunk_walkers=8",)))
    assert whole.chunk_walkers == 8
    params = jax.jit(setup.ansatz.init)(jax.random.PRNGKey(0))
    walkers = jnp.asarray(np.random.default_rng(1).normal(size=(8, 7, 3)), jnp.float32)
    jaxpr = str(jax.make_jaxpr(setup.batched_local_energy)(params, walkers))
    assert "scan" in jaxpr or "while" in jaxpr
    assert "scan" not in str(jax.make_jaxpr(whole.batched_local_energy)(params, walkers))
    got = np.asarray(jax.jit(setup.batched_local_energy)(params, walkers))
    want = np.asarray(jax.jit(whole.batched_local_energy)(params, walkers))
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
