"""FermiNet: same-spin antisymmetry, spin-dependent orbitals, translation, log_sum_det."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params
from vmc.ansatz import make_ansatz
from vmc.ansatz.common import log_sum_det
from vmc.config import AnsatzConfig
from vmc.system import make_molecule


def _mol(*atoms, spin=0, charge=0):
    return make_molecule([{"symbol": s, "position": list(p)} for s, p in atoms],
                         spin=spin, charge=charge)


MOLECULES = {
    "LiH": lambda shift=(0.0, 0.0, 0.0): _mol(
        ("Li", np.add((0.0, 0.0, 0.0), shift)), ("H", np.add((3.015, 0.0, 0.0), shift))),
    "N": lambda shift=(0.0, 0.0, 0.0): _mol(("N", np.add((0.1, -0.2, 0.3), shift)), spin=3),
}


def _cfg(full_det):
    return AnsatzConfig(hidden_one=(8, 8), hidden_two=(4, 4), determinants=2, full_det=full_det)




@functools.lru_cache(maxsize=None)
def _network(name, full_det):
    """(jitted batched log_psi, random float64 params, molecule)."""
    mol = MOLECULES[name]()
    with jax.enable_x64(True):
        ansatz = make_ansatz(_cfg(full_det), mol, jnp.float64)
        params = random_params(ansatz, seed=1)
    return jax.jit(jax.vmap(ansatz.log_psi, in_axes=(None, 0))), params, mol


def _walkers(mol, n, seed):
    rng = np.random.default_rng(seed)
    centres = mol.positions[rng.integers(mol.n_atoms, size=(n, mol.n_electrons))]
    return centres + rng.normal(size=(n, mol.n_electrons, 3))


def _swap(x, i, j):
    y = x.copy()
    y[:, [i, j]] = y[:, [j, i]]
    return y


@pytest.mark.parametrize("full_det", [True, False])
@pytest.mark.parametrize("name", ["LiH", "N"])
def test_same_spin_swap_flips_sign_and_opposite_spin_swap_changes_logabs(x64, name, full_det):
    fn, params, mol = _network(name, full_det)
    n_up, n_down = mol.n_up, mol.n_down
    x = _walkers(mol, 8, seed=0)
    swaps = [(0, 1), (n_up - 1, 0)]                          # spin up
    if n_down >= 2:
        swaps.append((n_up, n_up + n_down - 1))              # spin down
    configs = [x] + [_swap(x, i, j) for i, j in swaps] + [_swap(x, 0, n_up)]  # last: up↔down
    sign, logabs = (np.asarray(a).reshape(len(configs), -1)
                    for a in fn(params, jnp.asarray(np.concatenate(configs))))
    assert sign.dtype == np.float64 and np.all(np.abs(sign) == 1)
    assert np.all(np.isfinite(logabs))
    for k in range(1, len(swaps) + 1):
        np.testing.assert_array_equal(sign[k], -sign[0])
        np.testing.assert_allclose(logabs[k], logabs[0], rtol=0, atol=1e-10)
    # Opposite spins see different orbital weights: the spatial function has no symmetry
    # under an up↔down exchange (with shared weights a full determinant would be antisymmetric).
    assert np.min(np.abs(logabs[-1] - logabs[0])) > 1e-4


@pytest.mark.parametrize("full_det", [True, False])
def test_translation_of_electrons_and_nuclei_leaves_logabs_unchanged(x64, full_det):
    fn, params, mol = _network("LiH", full_det)
    shift = np.array([1.3, -0.7, 2.1])
    shifted_mol = MOLECULES["LiH"](tuple(shift))
    ansatz = make_ansatz(_cfg(full_det), shifted_mol, jnp.float64)
    x = _walkers(mol, 6, seed=1)
    sign0, log0 = fn(params, jnp.asarray(x))
    sign1, log1 = jax.jit(jax.vmap(ansatz.log_psi, in_axes=(None, 0)))(
        params, jnp.asarray(x + shift))
    np.testing.assert_array_equal(np.asarray(sign1), np.asarray(sign0))
    np.testing.assert_allclose(np.asarray(log1), np.asarray(log0), rtol=0, atol=1e-10)
    # moving the electrons alone does change ψ
    _, log2 = fn(params, jnp.asarray(x + shift))
    assert np.min(np.abs(np.asarray(log2) - np.asarray(log0))) > 1e-3


_log_sum_det = jax.jit(log_sum_det)


def _naive(blocks):
    """Σ_k Π_b det(M_bk) in plain float64 numpy."""
    return sum(np.prod([np.linalg.det(m[k]) for m in blocks]) for k in range(blocks[0].shape[0]))


@pytest.mark.parametrize("shapes", [[(1, 4, 4)], [(1, 3, 3), (1, 2, 2)], [(5, 4, 4)],
                                    [(3, 3, 3), (3, 2, 2)], [(4, 1, 1), (4, 3, 3)]])
def test_log_sum_det_matches_naive_sum(x64, shapes):
    rng = np.random.default_rng(len(shapes) * 10 + shapes[0][0])
    for trial in range(5):
        blocks = [rng.normal(size=s) for s in shapes]
        total = _naive(blocks)
        sign, logabs = _log_sum_det([jnp.asarray(b) for b in blocks])
        assert float(sign) == np.sign(total)
        np.testing.assert_allclose(float(logabs), np.log(np.abs(total)), rtol=0, atol=1e-10)


def test_log_sum_det_is_stable_for_huge_and_tiny_determinants(x64):
    """Scaling every matrix by c shifts log|ψ| by (Σ_b m_b) log c even where det overflows."""
    rng = np.random.default_rng(7)
    blocks = [rng.normal(size=(3, 4, 4)), rng.normal(size=(3, 3, 3))]
    sign0, log0 = _log_sum_det([jnp.asarray(b) for b in blocks])
    for c in (1e60, 1e-60):     # det ~ c^7 = 1e±420: outside float64's range
        sign, logabs = _log_sum_det([jnp.asarray(b * c) for b in blocks])
        assert float(sign) == float(sign0)
        np.testing.assert_allclose(float(logabs), float(log0) + 7 * np.log(c), rtol=1e-12)
    # and the gradient with respect to the matrices stays finite
    grad = jax.jit(jax.grad(lambda bs: log_sum_det(bs)[1]))([jnp.asarray(b * 1e60) for b in blocks])
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grad)


@pytest.mark.parametrize("name,jastrow", [("ferminet", False), ("psiformer", True)])
def test_orbitals_and_log_psi_is_one_pass_of_both(x64, name, jastrow):
    """Pretraining takes the orbitals and log|ψ| from one pass: they must be exactly
    `orbitals` and `log_psi` (with the Jastrow factor, which the orbitals alone lack)."""
    mol = MOLECULES["LiH"]()
    cfg = AnsatzConfig(name=name, hidden_one=(8, 8), hidden_two=(4, 4), determinants=2,
                       heads=2, head_dim=4, layers=2, jastrow=jastrow)
    ansatz = make_ansatz(cfg, mol, jnp.float64)
    params = random_params(ansatz, seed=2)
    for x in _walkers(mol, 3, seed=4):
        mats, (sign, logabs) = ansatz.orbitals_and_log_psi(params, x)
        want_sign, want_logabs = ansatz.log_psi(params, x)
        for m, w in zip(mats, ansatz.orbitals(params, x)):
            np.testing.assert_allclose(m, w, rtol=1e-12)
        assert float(sign) == float(want_sign)
        np.testing.assert_allclose(logabs, want_logabs, rtol=1e-12)
        if jastrow:   # the Jastrow factor is in: log|Σ det| of the orbitals alone differs
            assert abs(float(log_sum_det(mats)[1] - logabs)) > 1e-6


def test_shared_rows_dense_is_dense_of_the_concatenation(x64):
    """SharedRowsDense: nn.Dense's parameters (same initial values) and its output on
    concat_blocks(local, shared) to float64 rounding; a wrong row order would differ at O(1)."""
    import flax.linen as nn

    from vmc.ansatz.common import SharedRowsDense, concat_blocks
    rng = np.random.default_rng(0)
    local = [jnp.asarray(rng.normal(size=(5, d))) for d in (7, 3, 3)]
    shared = [jnp.asarray(rng.normal(size=(d,))) for d in (7, 7)]
    full = concat_blocks(local, shared)
    assert full.shape == (5, 27) and np.allclose(full[:, 13:20], np.broadcast_to(shared[0], (5, 7)))
    kw = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    split, dense = SharedRowsDense(6, **kw), nn.Dense(6, **kw)
    key = jax.random.PRNGKey(3)
    p_split = split.init(key, local, shared)
    p_dense = dense.init(key, full)
    for k in ("kernel", "bias"):
        np.testing.assert_array_equal(p_split["params"][k], p_dense["params"][k])
    p = jax.tree_util.tree_map(lambda a: a + jnp.asarray(rng.normal(size=a.shape)), p_dense)
    np.testing.assert_allclose(split.apply(p, local, shared), dense.apply(p, full),
                               rtol=1e-13, atol=1e-13)
    swapped = {"params": {"kernel": p["params"]["kernel"][::-1], "bias": p["params"]["bias"]}}
    assert np.max(np.abs(split.apply(swapped, local, shared) - dense.apply(p, full))) > 0.1


def test_schema1_checkpoint_gives_the_wavefunction_it_was_saved_with(x64):
    """tests/data/he_trained.h5 was written by the FermiNet of checkpoint schema 1 (the
    old one-electron input order). Its parameters, reordered by `current_layout`, are the
    trained He again: the stored log|ψ| of its 256 walkers (one optimizer step stale, as a
    checkpoint's are) to 1e-2, and E_L at those walkers, distributed as |ψ|², averages to
    He's exact energy with the small variance of a trained network. Without the reordering
    neither holds."""
    from helpers import HE_TRAINED, load_he_trained
    from vmc import checkpoint as ckpt
    from vmc.config import config_from_dict
    from vmc.train import build
    assert ckpt.read_attrs(HE_TRAINED)["schema_version"] == 1
    d = {"atoms": [{"symbol": "He", "position": [0.0, 0.0, 0.0]}],
         "ansatz": {"hidden_one": [32, 32, 32], "hidden_two": [8, 8, 8], "determinants": 8}}
    setup = build(config_from_dict(d, name="He"))
    mcmc = ckpt.read_tree_raw(HE_TRAINED, "mcmc")
    walkers = jnp.asarray(mcmc["walkers"])
    logabs = jax.jit(jax.vmap(setup.ansatz.log_psi, in_axes=(None, 0)))
    e_l = jax.jit(lambda p: setup.batched_local_energy(p, walkers))
    new = load_he_trained(setup, jnp.float32)
    old = load_he_trained(setup, convert=False)
    for params, right in ((new, True), (old, False)):
        dev = np.max(np.abs(np.asarray(logabs(params, walkers)[1]) - mcmc["logabs"]))
        e = np.asarray(e_l(params), np.float64)
        print(f"{'converted' if right else 'as stored'}: max |Δ log|ψ|| {dev:.2e}, "
              f"E_L mean {e.mean():.5f} Ha, variance {e.var():.2e} Ha²")
        if right:
            assert dev < 1e-2 and abs(e.mean() + 2.903724) < 5e-3 and e.var() < 5e-3
        else:
            assert dev > 0.05 and e.var() > 0.05


@pytest.mark.parametrize("name", ["ferminet", "psiformer"])
def test_nuclear_cusp_is_katos_and_keeps_the_local_energy_finite(x64, name):
    """With `nuclear_cusp`, ψ's cusp at every nucleus is exactly −Z (the antipodal mean of
    ∂ log|ψ|/∂r, which cancels the smooth part's linear term) and E_L tends to a finite
    value as an electron reaches a nucleus; without it (FermiNet only, to keep the suite
    short) the slope is off and E_L ∝ 1/r."""
    from vmc.hamiltonian import make_local_energy
    mol = _mol(("C", (0.0, 0.0, 0.0)), ("H", (0.0, 0.3, 2.0)), spin=1)
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(8, 3))
    dirs = jnp.asarray(dirs / np.linalg.norm(dirs, axis=1, keepdims=True))
    x = jnp.asarray(_walkers(mol, 1, seed=4)[0])
    forms = ((True, "pade"), (True, "tanh"), (False, "pade")) if name == "ferminet" \
        else ((True, "pade"),)
    for cusp, form in forms:
        cfg = AnsatzConfig(name=name, hidden_one=(8, 8), hidden_two=(4, 4), determinants=2,
                           heads=2, head_dim=4, nuclear_cusp=cusp, cusp_form=form)
        ansatz = make_ansatz(cfg, mol, jnp.float64)
        params = random_params(ansatz, seed=2)
        local_energy = jax.jit(make_local_energy(ansatz.log_psi, mol, dtype=jnp.float64))
        for atom, z in enumerate(mol.charges):
            centre = jnp.asarray(mol.positions[atom])

            def logabs(t, d):
                return ansatz.log_psi(params, x.at[0].set(centre + t * d))[1]
            slope = jax.vmap(jax.grad(logabs), in_axes=(None, 0))
            r = 1e-6
            cusp_value = float(jnp.mean(slope(r, dirs) + slope(r, -dirs)) / 2)
            e_near = [float(local_energy(params, x.at[0].set(centre + t * dirs[0])))
                      for t in (1e-4, 1e-6)]
            if cusp:
                assert abs(cusp_value + z) < 1e-3 * z, (name, atom, cusp_value)
                assert np.isfinite(e_near).all() and abs(e_near[1] - e_near[0]) < 1.0
            elif atom == 0:        # a random network's cusp at C is off (at H it may be close)
                assert abs(cusp_value + z) > 0.05, (name, atom, cusp_value)
                assert abs(e_near[1]) > 20 * abs(e_near[0])      # ∝ 1/r: 100× closer


@pytest.mark.parametrize("options", [
    {}, {"jastrow": True, "envelope": "full"}, {"full_det": False, "det_precision": "network"},
    {"name": "psiformer", "layer_norm": True}, {"nuclear_cusp": True},
    {"nuclear_cusp": True, "envelope": "full", "cusp_form": "tanh", "cusp_envelope_z": True},
    {"name": "psiformer", "nuclear_cusp": True}, {"ecp": True},
    {"ecp": True, "nuclear_cusp": True, "envelope": "full"}])
def test_a_float32_network_stays_float32(x64, options):
    """With float64 enabled (as every run has it) a float32 network returns float32 (sign,
    logabs) under every ansatz option: the sampler's loop carries float32 and refuses a
    float64 logabs (a float64 array of per-atom smoothing lengths once made `nuclear_cusp`
    runs crash so)."""
    options = dict(options)
    if options.pop("ecp", False):
        mol = make_molecule([{"symbol": "O", "position": [0.0, 0.0, 0.0]},
                             {"symbol": "H", "position": [0.0, 1.4, 1.1]},
                             {"symbol": "H", "position": [0.0, -1.4, 1.1]}], ecp="ccecp")
    else:
        mol = _mol(("C", (0.0, 0.0, 0.0)), ("H", (0.0, 0.3, 2.0)), spin=1)
    x = jnp.asarray(_walkers(mol, 1, seed=4)[0], jnp.float32)
    ansatz = make_ansatz(AnsatzConfig(hidden_one=(8, 8), hidden_two=(4, 4), determinants=2,
                                      heads=2, head_dim=4, **options), mol, jnp.float32)
    sign, logabs = ansatz.log_psi(ansatz.init(jax.random.PRNGKey(2)), x)
    assert sign.dtype == logabs.dtype == jnp.float32, logabs.dtype
    assert np.isfinite(float(logabs))


@pytest.mark.parametrize("form", ["pade", "tanh"])
def test_nuclear_cusp_form_sets_the_constant_it_adds_at_the_nucleus(x64, form):
    """−½∇²u of the cusp factor is Z/r plus a constant at the nucleus: −3Z/α for the Padé
    form α r/(α + r), 0 for tanh (no r² term); both have slope −Z."""
    from vmc.ansatz.common import NuclearCusp
    z, alpha = 6.0, 1.0 / 6.0
    module = NuclearCusp((z,), (alpha,), jnp.float64, form)
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 1, 1)))

    def u(pos):
        return module.apply(params, jnp.linalg.norm(pos)[None, None, None])[0]
    pos = jnp.asarray([3e-4, -2e-4, 1e-4])
    r = float(jnp.linalg.norm(pos))
    constant = float(-0.5 * jnp.trace(jax.hessian(u)(pos))) - z / r
    slope = float(jax.grad(u)(pos) @ pos) / r
    assert abs(slope + z) < 0.05                     # −Z + O(r/α) at r = 3.7e-4 bohr
    assert abs(constant - {"pade": -3 * z / alpha, "tanh": 0.0}[form]) < 1.0, constant


def test_nuclear_cusp_with_every_atom_an_ecp_says_it_does_nothing():
    """`unused_cusp_note` (printed by `vmc run` and `vmc check`) speaks only when the cusp is
    on and no atom is all-electron."""
    from vmc.ansatz import unused_cusp_note
    o = make_molecule([{"symbol": "O", "position": [0.0, 0.0, 0.0]}], spin=2, ecp="ccecp")
    oh = make_molecule([{"symbol": "O", "position": [0.0, 0.0, 0.0]},
                        {"symbol": "H", "position": [0.0, 0.0, 1.8]}], spin=1, ecp="ccecp")
    assert "no effect" in unused_cusp_note(AnsatzConfig(nuclear_cusp=True), o)
    assert unused_cusp_note(AnsatzConfig(nuclear_cusp=True), oh) is None
    assert unused_cusp_note(AnsatzConfig(), o) is None
    assert unused_cusp_note(AnsatzConfig(nuclear_cusp=True), _mol(("C", (0, 0, 0)), spin=2)) \
        is None


def test_nuclear_cusp_leaves_ecp_atoms_smooth(x64):
    """With an ECP atom and `nuclear_cusp`, only the all-electron atoms get the cusp factor
    (charge 0 at the ECP atom, whose smoothing length stays `ecp_smoothing`), and
    `cusp_envelope_z` starts the envelope exponents at Z only at those atoms."""
    mol = make_molecule([{"symbol": "O", "position": [0.0, 0.0, 0.0]},
                         {"symbol": "H", "position": [0.0, 1.4, 1.1]},
                         {"symbol": "H", "position": [0.0, -1.4, 1.1]}], ecp="ccecp")
    module = make_ansatz(AnsatzConfig(nuclear_cusp=True, cusp_length=0.6,
                                      ecp_smoothing=0.8), mol, jnp.float64).module
    assert module.cusp_charges == (0.0, 1.0, 1.0)
    assert module.smooth_atoms == (True, True, True)
    assert module.smooth_length == (0.8, 0.3, 0.3)
    assert module.cusp_lengths == (1.0, 0.6, 0.6)
    assert module.envelope_sigma == ()
    ansatz = make_ansatz(AnsatzConfig(nuclear_cusp=True, cusp_envelope_z=True), mol,
                         jnp.float64)
    sigma = ansatz.init(jax.random.PRNGKey(0))["params"]["envelope_up"]["sigma"]
    np.testing.assert_array_equal(np.asarray(sigma[:, 0]), [1.0, 1.0, 1.0])   # O: ECP
    mol = make_molecule([{"symbol": "C", "position": [0.0, 0.0, 0.0]},
                         {"symbol": "H", "position": [0.0, 0.0, 2.0]}], spin=1)
    for envelope in ("isotropic", "full"):
        ansatz = make_ansatz(AnsatzConfig(nuclear_cusp=True, cusp_envelope_z=True,
                                          envelope=envelope), mol, jnp.float64)
        sigma = np.asarray(ansatz.init(jax.random.PRNGKey(0))["params"]["envelope_up"]["sigma"])
        first = sigma[:, 0] if envelope == "isotropic" else sigma[:, 0, 0, 0]
        np.testing.assert_array_equal(first, [6.0, 1.0])
