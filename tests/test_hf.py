"""Hartree–Fock from PySCF: energies, orbitals against eval_gto, determinant, hydrogen."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc.errors import InputError
from vmc.hf import HartreeFock, eval_aos, eval_orbitals, hf_log_psi, run_hf
from vmc.system import make_molecule


def _mol(*atoms, spin=0, charge=0):
    return make_molecule([{"symbol": s, "position": list(p)} for s, p in atoms],
                         spin=spin, charge=charge)


HE = _mol(("He", (0.0, 0.0, 0.0)))
BE = _mol(("Be", (0.0, 0.0, 0.0)))
LI = _mol(("Li", (0.0, 0.0, 0.0)), spin=1)
H = _mol(("H", (0.0, 0.0, 0.0)), spin=1)
LIH = _mol(("Li", (0.0, 0.0, 0.0)), ("H", (3.015, 0.0, 0.0)))
O = _mol(("O", (0.1, -0.2, 0.3)), spin=2)
CO = _mol(("C", (0.0, 0.0, 0.0)), ("O", (0.0, 0.0, 2.173)))


@functools.lru_cache(maxsize=None)
def _hf(name: str, basis: str = "cc-pvdz", method: str = "auto") -> HartreeFock:
    return run_hf(globals()[name], basis, method)


def _points(molecule, n=300, seed=0):
    """n points around the nuclei (normal, σ = 1.5 bohr), plus each nucleus itself."""
    rng = np.random.default_rng(seed)
    centres = molecule.positions[rng.integers(molecule.n_atoms, size=n)]
    return np.concatenate([molecule.positions, centres + 1.5 * rng.normal(size=(n, 3))])


@pytest.mark.parametrize("name,basis", [("BE", "cc-pvdz"), ("LIH", "cc-pvdz"),
                                        ("O", "cc-pvdz"), ("CO", "cc-pvtz")])
def test_orbitals_match_pyscf_eval_gto(x64, name, basis):
    molecule = globals()[name]
    hf = _hf(name, basis)
    if basis == "cc-pvtz":
        assert hf.shell_l.max() == 3  # f functions exercised
    x = _points(molecule)
    ao_ref = molecule.to_pyscf(basis).eval_gto("GTOval_sph", x)
    np.testing.assert_allclose(np.asarray(eval_aos(hf, x)), ao_ref, rtol=0, atol=1e-10)
    up, down = jax.jit(lambda p: eval_orbitals(hf, p))(x)
    assert up.shape == (x.shape[0], molecule.n_up) and up.dtype == jnp.float64
    assert down.shape == (x.shape[0], molecule.n_down)
    np.testing.assert_allclose(np.asarray(up), ao_ref @ hf.coeff_up, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(down), ao_ref @ hf.coeff_down, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name,energy", [("HE", -2.85516048), ("LIH", -7.98361861)])
def test_rhf_energy_matches_reference(name, energy):
    hf = _hf(name)
    assert hf.method == "rhf"
    assert abs(hf.energy - energy) < 1e-6
    np.testing.assert_array_equal(hf.coeff_up, hf.coeff_down)


def test_rhf_orbitals_orthonormal_in_ao_metric():
    hf = _hf("LIH")
    s = LIH.to_pyscf("cc-pvdz").intor("int1e_ovlp")
    np.testing.assert_allclose(hf.coeff_up.T @ s @ hf.coeff_up, np.eye(2), atol=1e-8)


def test_open_shell_li_occupations():
    hf = _hf("LI")
    assert hf.method == "rohf"
    assert hf.coeff_up.shape == (14, 2) and hf.coeff_down.shape == (14, 1)
    # ROHF: the doubly occupied orbital is shared by both spins.
    np.testing.assert_allclose(hf.coeff_up[:, 0], hf.coeff_down[:, 0])
    uhf = _hf("LI", "cc-pvdz", "uhf")
    assert uhf.method == "uhf" and uhf.n_up == 2 and uhf.n_down == 1
    assert abs(uhf.energy - (-7.43242053)) < 1e-6   # reference README, Li UHF/cc-pVDZ
    assert uhf.energy <= hf.energy + 1e-9


def test_negative_spin_swaps_spins():
    hf = run_hf(_mol(("Li", (0.0, 0.0, 0.0)), spin=-1))
    assert hf.n_up == 1 and hf.n_down == 2
    assert abs(hf.energy - _hf("LI").energy) < 1e-8


@pytest.mark.filterwarnings("ignore:Basis may be available")
def test_bad_method_and_basis_raise_input_error():
    with pytest.raises(InputError, match=r"pretrain\.method.*valid: auto, rhf, rohf, uhf"):
        run_hf(HE, method="dft")
    with pytest.raises(InputError, match=r"pretrain\.method: 'rhf' needs a closed shell"):
        run_hf(LI, method="rhf")
    with pytest.raises(InputError, match=r"pretrain\.basis"):
        run_hf(HE, basis="no-such-basis")


def test_log_psi_slater_determinant(x64):
    hf = _hf("LI")
    log_psi = jax.jit(lambda c: hf_log_psi(hf, c))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)))
    sign, logabs = log_psi(x)
    up, down = eval_orbitals(hf, x)
    psi = np.linalg.det(np.asarray(up[:2])) * np.asarray(down[2, 0])
    np.testing.assert_allclose(sign * np.exp(logabs), psi, rtol=1e-12)
    # Antisymmetric under a same-spin swap.
    sign2, logabs2 = log_psi(x[jnp.array([1, 0, 2])])
    assert sign2 == -sign and abs(logabs2 - logabs) < 1e-12
    # Batched at one seam: vmap equals the per-walker call.
    xs = jnp.stack([x, 2 * x, x + 0.5])
    s_b, l_b = jax.jit(jax.vmap(log_psi))(xs)
    for k in range(3):
        s_k, l_k = log_psi(xs[k])
        assert s_b[k] == s_k and abs(l_b[k] - l_k) < 1e-12


def test_laplacian_of_log_psi_is_finite_and_matches_finite_differences(x64):
    hf = _hf("LIH")
    rng = np.random.default_rng(2)
    x = LIH.positions[[0, 0, 1, 1]] + 0.8 * rng.normal(size=(4, 3))

    @jax.jit
    def f(flat):
        return hf_log_psi(hf, flat.reshape(4, 3))[1]

    hessian = jax.jit(jax.hessian(f))
    flat = jnp.asarray(x.reshape(-1))
    lap = jnp.trace(hessian(flat))
    assert np.isfinite(lap)
    h, fd = 1e-4, 0.0
    for i in range(12):
        e = jnp.zeros(12).at[i].set(h)
        fd += (f(flat + e) - 2 * f(flat) + f(flat - e)) / h**2
    np.testing.assert_allclose(lap, fd, rtol=1e-5)
    # At a nucleus (d = 0 in every power of the shell on it) the Hessian stays finite.
    at_nucleus = flat.at[:3].set(jnp.asarray(LIH.positions[0]))
    assert np.all(np.isfinite(hessian(at_nucleus)))


def test_hydrogen_orbital_close_to_exact(x64):
    """H/cc-pVQZ ROHF orbital ≈ exp(−r)/√π; its local energy ≈ −0.5 Ha away from r = 0."""
    hf = _hf("H", "cc-pvqz")
    assert hf.n_up == 1 and hf.n_down == 0
    assert abs(hf.energy + 0.5) < 1e-4
    up, _ = eval_orbitals(hf, jnp.array([[1.0, 0.0, 0.0], [0.0, -0.6, 0.8]]))
    exact = np.exp(-1.0) / np.sqrt(np.pi)
    np.testing.assert_allclose(np.abs(np.asarray(up[:, 0])), exact, rtol=0.01)

    def log_psi(r):
        return hf_log_psi(hf, r.reshape(1, 3))[1]

    def local_energy(r):
        g = jax.grad(log_psi)(r)
        lap = jnp.trace(jax.hessian(log_psi)(r))
        return -0.5 * (lap + g @ g) - 1.0 / jnp.linalg.norm(r)

    r = jnp.asarray(np.random.default_rng(3).normal(size=(50, 3)))
    r = r / jnp.linalg.norm(r, axis=1, keepdims=True) * jnp.linspace(0.5, 3.0, 50)[:, None]
    e_loc = np.asarray(jax.jit(jax.vmap(local_energy))(r))
    # Gaussians miss the cusp: E_L wobbles by a few 0.01 Ha (wrong Laplacian: O(1) errors).
    assert np.all(np.abs(e_loc + 0.5) < 0.1)
    assert abs(np.mean(e_loc) + 0.5) < 0.02


def test_scf_retries_then_raises(monkeypatch):
    import pyscf.scf.hf

    from vmc.hf import SCFError

    monkeypatch.setattr(pyscf.scf.hf.SCF, "max_cycle", 2)   # default run stops unconverged
    hf = run_hf(HE)                                         # the level-shift retry converges
    assert abs(hf.energy - (-2.85516048)) < 1e-6
    monkeypatch.setattr(pyscf.scf.hf.SCF, "conv_tol", -1.0)       # nothing can converge
    monkeypatch.setattr(pyscf.scf.hf.SCF, "conv_tol_grad", -1.0)
    with pytest.raises(SCFError, match="did not converge"):
        run_hf(HE)
