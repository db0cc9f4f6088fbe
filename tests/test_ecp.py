"""Pseudopotentials (vmc.ecp, MATH.md §8): rotations, quadrature, the non-local estimator,
valence-only molecules, input errors."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc import ecp
from vmc.config import config_from_dict
from vmc.errors import InputError
from vmc.system import make_molecule

O_ATOM = [{"symbol": "O", "position": [0.0, 0.0, 0.0]}]

# A synthetic ECP with strong s, p, d channels (so rule errors are visible).
SYNTH = {0: ("test", 2, {-1: [(0, 0.5, 1.0)], 0: [(0, 0.1, 2.0)], 1: [(0, 0.1, 1.5)],
                        2: [(0, 0.1, 1.0)]})}


def _psi(centre):
    """A one-electron ψ with a sign change and no symmetry about the ECP atom at 0."""
    c = jnp.asarray(centre)

    def log_psi(x):
        v = jnp.exp(-0.5 * jnp.sum((x[0] - c) ** 2)) * (0.3 + x[0, 2] + 0.4 * x[0, 0] * x[0, 1])
        return jnp.sign(v), jnp.log(jnp.abs(v))
    return log_psi


def test_rotations_uniform_on_so3(x64):
    r = np.asarray(ecp.random_rotations(jax.random.PRNGKey(0), (40000,)), np.float64)
    assert np.allclose(np.einsum("nij,nkj->nik", r, r), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(r), 1.0, atol=1e-5)
    ez = r[:, :, 2]                                   # R e_z
    se = 1 / np.sqrt(len(ez))
    assert np.all(np.abs(ez.mean(0)) < 4 * se * np.sqrt(1 / 3))
    assert np.all(np.abs((ez ** 2).mean(0) - 1 / 3) < 4 * se * 0.3)
    # the rotation angle θ of a Haar rotation has density (1 − cos θ)/π, so E[cos θ] = −1/2
    # and E[tr R] = E[1 + 2 cos θ] = 0. (Uniform Euler angles fail the second check above:
    # with β uniform, E[cos² β] = 1/2.)
    assert abs(np.trace(r, axis1=1, axis2=2).mean()) < 4 * se


@pytest.mark.parametrize("rule", ecp.RULES)
def test_rules_integrate_to_their_degree(rule):
    pts, w = ecp.quadrature(rule)
    assert np.allclose(np.linalg.norm(pts, axis=1), 1.0) and abs(w.sum() - 1) < 1e-12
    deg = ecp.RULE_DEGREE[rule]
    # ∫ z^k dΩ/4π = 1/(k+1) for even k, 0 for odd
    for k in range(deg + 1):
        exact = 1.0 / (k + 1) if k % 2 == 0 else 0.0
        assert abs(np.sum(w * pts[:, 2] ** k) - exact) < 1e-10, (rule, k)


def test_nonlocal_converges_with_rule_order_and_rotation_average(x64):
    table = ecp.make_table(SYNTH)
    atoms = jnp.zeros((1, 3))
    log_psi = _psi([0.4, -0.2, 0.3])
    x = jnp.asarray([[0.5, 0.3, -0.6]])
    ref = float(ecp.nonlocal_energy(table, log_psi, x, atoms, None, "lebedev23"))
    errs = [abs(float(ecp.nonlocal_energy(table, log_psi, x, atoms, None, r)) - ref)
            for r in ("tetrahedron", "icosahedron", "lebedev11", "lebedev17")]
    assert errs[0] > 1e-3, errs                      # the test can see a rule error
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-6, errs
    # the randomly rotated 12-point rule is unbiased: its mean over rotations is the integral
    keys = jax.random.split(jax.random.PRNGKey(3), 20000)
    vals = np.asarray(jax.jit(jax.vmap(
        lambda k: ecp.nonlocal_energy(table, log_psi, x, atoms, k, "icosahedron")))(keys))
    se = vals.std() / np.sqrt(len(vals))
    assert vals.std() > 1e-4                          # rotations do change the estimate
    assert abs(vals.mean() - ref) < 4 * se + 1e-9, (vals.mean(), ref, se)


def test_nonlocal_channels_removed_leaves_the_local_term(x64):
    no_nl = {0: ("test", 2, {-1: SYNTH[0][2][-1]})}
    table = ecp.make_table(no_nl)
    atoms = jnp.zeros((1, 3))
    x = jnp.asarray([[0.5, 0.3, -0.6]])
    log_psi = _psi([0.4, -0.2, 0.3])
    assert float(ecp.nonlocal_energy(table, log_psi, x, atoms, jax.random.PRNGKey(0))) == 0.0
    r = float(jnp.linalg.norm(x))
    assert np.isclose(float(ecp.local_potential(table, x, atoms)), np.exp(-0.5 * r * r))
    # a ψ symmetric about the ECP atom sees only the s channel: estimator = V_0(r)
    full = ecp.make_table(SYNTH)
    sym = lambda y: (jnp.ones(()), -jnp.sum(y ** 2))    # noqa: E731
    v0 = 2.0 * np.exp(-0.1 * r * r)
    got = float(ecp.nonlocal_energy(full, sym, x, atoms, jax.random.PRNGKey(1)))
    assert abs(got - v0) < 1e-10, (got, v0)


def test_beyond_cutoff_skips_nonlocal(x64):
    from vmc.hf import load_ecp
    table = ecp.make_table({0: ("ccecp", 2, load_ecp("ccecp", "O")[1])})
    assert 0.8 < table.cutoff[0] < 3.0
    x = jnp.asarray([[0.0, 0.0, table.cutoff[0] + 0.1]])
    assert float(ecp.nonlocal_energy(table, _psi([0.1, 0.0, 0.0]), x, jnp.zeros((1, 3)))) == 0.0


def test_valence_only_counting():
    mol = make_molecule(O_ATOM, spin=2, ecp="ccecp")
    assert mol.n_electrons == 6 and (mol.n_up, mol.n_down) == (4, 2)
    assert mol.charges.tolist() == [6.0] and mol.n_core == (2,)
    h2o = make_molecule([{"symbol": "O", "position": [0.0, 0.0, 0.0]},
                         {"symbol": "H", "position": [0.0, 0.0, 1.8]},
                         {"symbol": "H", "position": [1.8, 0.0, 0.0]}], ecp="ccecp")
    assert h2o.n_electrons == 8 and h2o.ecp == ("ccecp", None, None)
    assert np.isclose(h2o.nuclear_repulsion, 6 / 1.8 * 2 + 1 / (1.8 * np.sqrt(2)))
    oh = make_molecule([{"symbol": "O", "position": [0.0, 0.0, 0.0]},
                        {"symbol": "H", "position": [0.0, 0.0, 1.8]}], spin=1,
                       ecp={"O": "ccecp"})
    assert oh.n_electrons == 7
    kr = make_molecule([{"symbol": "Kr", "position": [0.0, 0.0, 0.0]}], ecp="ccecp")
    assert kr.n_electrons == 8
    iodine = make_molecule([{"symbol": "I", "position": [0.0, 0.0, 0.0]}], spin=1, ecp="ccecp")
    assert iodine.n_electrons == 7 and iodine.n_core == (46,)
    cfg = config_from_dict({"atoms": O_ATOM, "spin": 2}, overrides=("hamiltonian.ecp=ccecp",))
    assert cfg.pretrain.basis == "ccecp-cc-pvdz"
    assert config_from_dict({"atoms": O_ATOM, "spin": 2}).pretrain.basis == "cc-pvdz"


@pytest.mark.parametrize("atoms,ecp_set,words", [
    ([{"symbol": "I", "position": [0, 0, 0]}], None, ["molecule.atoms[0].symbol", "beyond Kr",
                                                      "hamiltonian.ecp: ccecp"]),
    ([{"symbol": "Xe", "position": [0, 0, 0]}], "ccecp", ["hamiltonian.ecp", "no 'ccecp'",
                                                          "Xe"]),
    ([{"symbol": "O", "position": [0, 0, 0]}], {"Q": "ccecp"}, ["hamiltonian.ecp.Q",
                                                               "unknown element"]),
    ([{"symbol": "O", "position": [0, 0, 0]}], 3, ["hamiltonian.ecp", "expected null"]),
    ([{"symbol": "O", "position": [0, 0, 0]}], "nosuchecp", ["hamiltonian.ecp", "nosuchecp"]),
    # a name PySCF has for no element is refused also where no atom would take it (He, H)
    ([{"symbol": "He", "position": [0, 0, 0]}], "ccpvdz",
     ["hamiltonian.ecp: PySCF has no ECP named 'ccpvdz' (for any element); valid: ccecp,",
      "lanl2dz", "or null (all-electron)"]),
    ([{"symbol": "He", "position": [0, 0, 0]}], "ccecpp", ["did you mean 'ccecp'?"]),
    ([{"symbol": "He", "position": [0, 0, 0]}], {"Ne": "ccpvdz"},
     ["hamiltonian.ecp.Ne: PySCF has no ECP named 'ccpvdz'"]),
])
def test_ecp_input_errors(atoms, ecp_set, words):
    with pytest.raises(InputError) as e:
        make_molecule(atoms, spin=0, ecp=ecp_set)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_ecp_names_spelled_as_pyscf_takes_them_still_pass_on_light_atoms(capsys):
    he = [{"symbol": "He", "position": [0, 0, 0]}]
    for name in ("ccECP", "lanl2dz", "null", {"He": "ccecp"}):
        make_molecule(he, spin=0, ecp=name)
    from vmc.cli import main
    assert main(["check", "systems/He.yaml", "--set", "hamiltonian.ecp=ccpvdz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: hamiltonian.ecp: PySCF has no ECP named 'ccpvdz'")
    assert err.count("\n") == 1


def test_an_ecp_with_spin_orbit_terms_gives_its_scalar_part():
    """crenbl lists [α, c, c_SO] per term (ccecp [α, c]): load_ecp keeps (n − 2, α, c), the
    scalar part, term by term as PySCF lists them (it crashed on the third column)."""
    from pyscf import gto

    from vmc.hf import load_ecp
    n_core, chans = load_ecp("crenbl", "Li")
    raw_core, raw = gto.basis.load_ecp("crenbl", "Li")
    assert n_core == raw_core == 2
    want = {int(l): [(n - 2, t[0], t[1]) for n, ts in enumerate(by_n) for t in ts]
            for l, by_n in raw}
    assert any(len(t) == 3 for _, by_n in raw for ts in by_n for t in ts)
    assert chans == want and chans[-1][0] == (-1, 7.25349998, -1.37580501)
    mol = make_molecule([{"symbol": "Li", "position": [0, 0, 0]}], spin=1, ecp="crenbl")
    assert mol.n_electrons == 1


@pytest.mark.parametrize("ansatz", ["ferminet", "psiformer"])
def test_local_energy_finite_at_an_ecp_nucleus(x64, ansatz):
    """The ECP's total potential is finite at its nucleus and the ansatz is smooth there
    (no all-electron cusp), so E_L stays bounded as an electron approaches it."""
    from vmc.train import build
    cfg = config_from_dict({"atoms": O_ATOM, "spin": 2}, preset="tiny",
                           overrides=(f"ansatz.name={ansatz}", "hamiltonian.ecp=ccecp",
                                      "run.x64=true", "ansatz.envelope=full"))
    setup = build(cfg)
    params = setup.ansatz.init(jax.random.PRNGKey(0))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (6, 3))) * 0.8
    e_l = jax.jit(setup.local_energy)
    direction = np.array([0.3, -0.5, 0.81]) / np.linalg.norm([0.3, -0.5, 0.81])
    vals = []
    for r in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5):
        y = x.copy()
        y[0] = r * direction
        vals.append(float(e_l(params, jnp.asarray(y), jax.random.PRNGKey(2))))
    assert np.all(np.isfinite(vals)), vals
    # converges (ccECP's own r¹ term makes the approach linear in r), no 1/r divergence
    assert max(vals[2:]) - min(vals[2:]) < 0.5, vals
    # all-electron, the same network diverges like (Z − cusp)/r: the check can fail
    ae = build(config_from_dict({"atoms": O_ATOM, "spin": 2}, preset="tiny",
                                overrides=(f"ansatz.name={ansatz}", "run.x64=true")))
    p_ae = ae.ansatz.init(jax.random.PRNGKey(0))
    x8 = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (8, 3))) * 0.8
    far, near = x8.copy(), x8.copy()
    far[0], near[0] = 1e-2 * direction, 1e-5 * direction
    e_far, e_near = (float(jax.jit(ae.local_energy)(p_ae, jnp.asarray(v))) for v in (far, near))
    assert abs(e_near - e_far) > 100, (e_far, e_near)


def test_reference_keyed_by_hamiltonian():
    from vmc.config import load_config, reference_mismatch
    o = load_config("systems/O.yaml", overrides=("hamiltonian.ecp=ccecp",))
    assert "all-electron" in reference_mismatch(o) and "ccecp" in reference_mismatch(o)
    assert reference_mismatch(load_config("systems/O.yaml")) is None
    na = load_config("systems/Na_ccecp.yaml")
    assert reference_mismatch(na) is None and na.molecule.reference.energy == -0.186205
    assert "ccecp" in reference_mismatch(load_config("systems/Na_ccecp.yaml",
                                                     overrides=("hamiltonian.ecp=null",)))


def test_local_only_ecps_skip_the_nonlocal_estimator(x64):
    """ccECP's H has a local part only: its rows leave the non-local table (their ψ ratios
    were masked to exactly 0), and the non-local energy of water with {O, H: ccecp} is the
    same with the full table and with O's row alone."""
    from vmc.hamiltonian import ecp_table
    water = make_molecule([{"symbol": "O", "position": [0.0, 0.0, 0.0]},
                           {"symbol": "H", "position": [0.0, 0.0, 1.8]},
                           {"symbol": "H", "position": [1.8, 0.0, 0.0]}],
                          ecp={"O": "ccecp", "H": "ccecp"})
    full = ecp_table(water)
    kept = ecp.with_nonlocal(full)
    assert full.atoms.tolist() == [0, 1, 2] and kept.atoms.tolist() == [0]
    assert ecp.with_nonlocal(ecp_table(make_molecule(
        [{"symbol": "H", "position": [0.0, 0.0, 0.0]}], spin=1, ecp={"H": "ccecp"}))) is None
    atoms = jnp.asarray(water.positions)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)) * 0.8)
    psi = _psi([0.1, 0.2, -0.3])

    def log_psi(y):   # many electrons: the ratio moves with any of them
        return psi(y[:1] + 0.1 * jnp.sum(y[1:], axis=0, keepdims=True))
    a = ecp.nonlocal_energy(full, log_psi, x, atoms)
    b = ecp.nonlocal_energy(kept, log_psi, x, atoms)
    assert float(a) != 0.0 and np.isclose(float(a), float(b), rtol=1e-12, atol=0.0)


def test_ecp_energy_same_in_chunks_and_from_the_key(x64):
    """The rotations come from the step's key per walker (fold_in), not from the chunking."""
    from vmc.hamiltonian import over_walkers
    from vmc.train import build
    cfg = config_from_dict({"atoms": O_ATOM, "spin": 2}, preset="tiny",
                           overrides=("hamiltonian.ecp=ccecp", "run.x64=true"))
    setup = build(cfg)
    params = setup.ansatz.init(jax.random.PRNGKey(0))
    w = jax.random.normal(jax.random.PRNGKey(1), (6, 6, 3)) * 0.7
    key = jax.random.PRNGKey(4)
    batched = jax.jit(over_walkers(setup.local_energy))   # jitted: 12 s cold, eager 21 s
    whole = np.asarray(batched(params, w, key))
    chunked = np.asarray(jax.jit(over_walkers(setup.local_energy, chunk=2))(params, w, key))
    other = np.asarray(batched(params, w, jax.random.PRNGKey(5)))
    assert np.allclose(whole, chunked, rtol=1e-12, atol=1e-12)
    assert not np.allclose(whole, other)       # the non-local part does depend on the key
    assert setup.ecp_key(key) is not None


def test_resume_with_ecp_is_bit_identical(tmp_path, x64):
    """2N steps straight == N steps then --resume for N more, with the non-local ECP energy in
    E_L (its rotations come from each step's key). Li with ccECP: one valence electron."""
    import pathlib

    from vmc import checkpoint as ckpt
    from vmc import h5io
    from vmc.cli import main
    cfg = tmp_path / "li.yaml"
    cfg.write_text("atoms:\n  - {symbol: Li, position: [0.0, 0.0, 0.0]}\nspin: 1\n"
                   "hamiltonian: {ecp: ccecp}\n")

    def args(steps):
        return ["--preset", "tiny", "--set", "run.x64=true", "--set", f"optim.steps={steps}",
                "--set", "run.checkpoint_every=3", "--set", "eval.steps=0",
                "--set", "sampler.burn_in=0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["run", str(cfg), "--out", str(straight), *args(6)]) == 0
    assert main(["run", str(cfg), "--out", str(split), *args(3)]) == 0
    assert main(["run", str(cfg), "--out", str(split), "--resume", *args(6)]) == 0
    for name in ("params", "mcmc"):
        a, b = (ckpt.read_tree_raw(ckpt.checkpoint_path(pathlib.Path(d) / "checkpoints", 6),
                                   name) for d in (straight, split))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}/{k}")
    sa, sb = h5io.read_stats(straight / "train.h5"), h5io.read_stats(split / "train.h5")
    np.testing.assert_array_equal(sa["energy"], sb["energy"])


def test_network_and_walkers_see_z_eff(x64):
    """With an ECP the network's charges, the envelope's starting values and the walkers'
    electrons per atom follow Z_eff = Z − n_core (H2O with ccECP on O: 6 + 1 + 1), never Z.
    The envelope starts at π = σ = 1 for every atom (FermiNet's initialisation, which does
    not depend on the charge), so the ECP molecule's initial envelope equals that of the
    all-electron one orbital for orbital."""
    from vmc.ansatz import make_ansatz
    from vmc.config import AnsatzConfig
    from vmc.sampler import electron_assignment, init_walkers
    atoms = [{"symbol": "O", "position": [0.0, 0.0, 0.0]},
             {"symbol": "H", "position": [0.0, 0.0, 1.8]},
             {"symbol": "H", "position": [1.8, 0.0, 0.0]}]
    mol = make_molecule(atoms, ecp="ccecp")
    up, down = electron_assignment(mol)
    assert np.bincount(np.concatenate([up, down]), minlength=3).tolist() == [6, 1, 1]
    w = np.asarray(init_walkers(jax.random.PRNGKey(0), mol, 64, 0.5))
    assert w.shape == (64, 8, 3)
    near_o = np.linalg.norm(w, axis=-1) < np.linalg.norm(w - [0.0, 0.0, 1.8], axis=-1)
    assert 5.0 < near_o.sum(axis=1).mean() < 7.0          # ~6 electrons start at O, not 8
    for name in ("ferminet", "psiformer"):
        a = make_ansatz(AnsatzConfig(name=name), mol)
        assert a.module.charges == (6.0, 1.0, 1.0) and a.module.smooth_atoms == (True, False,
                                                                                  False)
    env = a.init(jax.random.PRNGKey(0))["params"]["envelope_up"]       # the psiformer's
    assert env["sigma"].shape[0] == 3
    assert np.all(np.asarray(env["sigma"]) == 1.0) and np.all(np.asarray(env["pi"]) == 1.0)


def test_ecp_runs_default_to_no_clipping():
    """With an ECP the gradient's E_L is not clipped unless optim.clip is given: the clip cuts
    the systematic signal of the rare core walkers (E_L ≈ +15 Ha for Na's too-large early ψ
    inside the repulsive s channel) and training stalls +13.5 mHa above Na's exact energy."""
    from vmc.config import load_config
    from vmc.optim.sr import clip_local_energy
    assert load_config("systems/Na_ccecp.yaml").optim.clip is None
    assert load_config("systems/Na_ccecp.yaml", overrides=("optim.clip=5",)).optim.clip == 5.0
    assert load_config("systems/Na_ccecp.yaml",
                       overrides=("hamiltonian.ecp=null",)).optim.clip == 5.0
    assert load_config("systems/O.yaml").optim.clip == 5.0
    # the mechanism: a converged bulk (σ = 3 mHa) and one core walker at +17 Ha
    e = np.concatenate([-0.18 + 0.003 * np.random.default_rng(0).standard_normal(255), [17.0]])
    clipped, frac = clip_local_energy(jnp.asarray(e), 5.0)
    assert float(frac) == 1 / 256
    assert 40 < (17.0 + 0.18) / (float(clipped[-1]) + 0.18) < 60    # its excess cut ~50x


@pytest.mark.parametrize("length", [1.0, 0.25])
def test_smooth_distance_has_no_cusp_and_its_length_sets_the_scale(x64, length):
    """√(r² + a²) − a: zero value and (almost) zero slope at an ECP nucleus, curvature 1/a there,
    r − a + a²/(2r) + … far away; all-electron atoms keep r. ansatz.ecp_smoothing reaches it."""
    from vmc.ansatz.common import smooth_distance
    from vmc.config import load_config

    def d(v, smooth):
        ae = v.reshape(1, 1, 3)
        return smooth_distance(ae, jnp.linalg.norm(ae, axis=-1, keepdims=True), smooth,
                               length)[0, 0, 0]
    u = jnp.asarray([0.6, 0.0, 0.8])
    assert float(d(0.0 * u, (True,))) == 0.0
    slope = jax.grad(lambda t: d(t * u, (True,)))
    # (at 1e-6 bohr, not 0: the all-electron branch's |r| has no derivative at 0)
    assert abs(float(slope(1e-6))) < 1e-5
    np.testing.assert_allclose(float(jax.grad(slope)(1e-6)), 1.0 / length, rtol=1e-9)
    np.testing.assert_allclose(float(d(50.0 * u, (True,))), 50.0 - length, atol=length ** 2 / 90)
    assert float(d(0.3 * u, (False,))) == pytest.approx(0.3, rel=1e-14)
    path = pathlib.Path(__file__).resolve().parents[1] / "systems" / "O_ccecp.yaml"
    assert load_config(path).ansatz.ecp_smoothing == 1.0
    cfg = load_config(path, overrides=(f"ansatz.ecp_smoothing={length}",))
    from vmc.train import build
    ansatz = build(cfg).ansatz
    assert ansatz.module.smooth_length == length
