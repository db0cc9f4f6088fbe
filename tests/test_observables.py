"""Observables beyond the energy (vmc.observables, MATH.md §9) against PySCF on the same
determinant (the `hf` ansatz), through `vmc.evaluate.evaluate` as in a run (float32 network,
means in float64). Every comparison is |VMC − reference| ≤ 3σ (reblocked) with σ bounded, so
that a wrong estimator fails; fixed seeds.

- ⟨S²⟩ of a broken-symmetry UHF determinant of H₂ at R = 4 bohr (⟨S²⟩ ≈ 1) equals PySCF's
  `spin_square()`; an RHF singlet gives exactly 0; the trained He FermiNet gives 0.
- The dipole of HeH⁺ (RHF/cc-pVDZ, about the centre of nuclear charge) equals PySCF's
  `dip_moment()`.
- Forces on H₂ at R = 2 bohr: for the `hf` ansatz (MO coefficients fixed, basis moving with
  the nuclei) −dE_VMC/dR is exactly PySCF's analytic RHF gradient (HF is stationary in the
  orbitals); ZV + ZB must match it, ZV alone must not (the Pulay term matters for a Gaussian
  basis), and ZV must have a much smaller error bar than plain Hellmann–Feynman.
- The radial density of the H atom (ROHF/cc-pVDZ) matches PySCF's `eval_rho` shell by shell
  (χ² per bin near 1).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc import checkpoint as ckpt
from vmc.config import config_from_dict
from vmc.errors import InputError
from vmc.evaluate import evaluate
from vmc.obs_report import parse_observables, summarize_observables
from vmc.sampler import init_walkers
from vmc.train import build

from helpers import load_he_trained

H2 = lambda r: [{"symbol": "H", "position": [0.0, 0.0, 0.0]},  # noqa: E731
                {"symbol": "H", "position": [0.0, 0.0, r]}]
LIH = [{"symbol": "Li", "position": [0.0, 0.0, 0.0]}, {"symbol": "H", "position": [0.0, 0.0, 3.015]}]


def _run(setup, names, walkers, steps, seed=3, burn_in=30):
    """Reblocked observables of one evaluation; ≥ 256 steps so that reblocking can reach
    blocks of 16 steps (MIN_BLOCKS = 16 blocks), beyond the correlation time."""
    key = jax.random.PRNGKey(seed)
    w = init_walkers(jax.random.fold_in(key, 0), setup.molecule, walkers, 1.0, setup.dtype)
    res = evaluate(setup, {}, w, 0.3, steps=steps, burn_in=burn_in,
                   key=jax.random.fold_in(key, 1), observables=names)
    return summarize_observables(res.observables, {"walkers": walkers,
                                                   "density_rmax": setup.cfg.eval.density_rmax})


def _hf_setup(atoms, extra=(), hf=None, spin=0):
    cfg = config_from_dict({"atoms": atoms, "spin": spin},
                           overrides=("ansatz.name=hf", "pretrain.basis=cc-pvdz",
                                      "sampler.moves=4") + tuple(extra))
    return build(cfg, hf=hf)


def _broken_symmetry_uhf(r=4.0):
    """PySCF UHF of H₂ with the α and β electrons on different atoms, as a HartreeFock."""
    from pyscf import gto, scf

    from vmc.hf import HartreeFock, _occupied, _shells
    mol = gto.M(atom=[("H", (0, 0, 0)), ("H", (0, 0, r))], unit="Bohr", basis="cc-pvdz",
                verbose=0)
    mf = scf.UHF(mol)
    c = scf.RHF(mol).run().mo_coeff
    mix_a = (c[:, 0] + c[:, 1]) / np.sqrt(2)     # left-localised α, right-localised β
    mix_b = (c[:, 0] - c[:, 1]) / np.sqrt(2)
    dm_a, dm_b = np.outer(mix_a, mix_a), np.outer(mix_b, mix_b)
    mf.kernel(dm0=(dm_a, dm_b))
    s2 = mf.spin_square()[0]
    c_up, c_down = _occupied(mf, "uhf")
    hf = HartreeFock(energy=float(mf.e_tot), method="uhf", basis="cc-pvdz", coeff_up=c_up,
                     coeff_down=c_down, **_shells(mol))
    return hf, s2


def test_parse_observables_and_bad_name():
    assert parse_observables("forces, s2") == ("s2", "forces")
    cfg = config_from_dict({"atoms": H2(1.4)}, overrides=("eval.observables=dipole,s2",))
    assert cfg.eval.observables == ("s2", "dipole")
    with pytest.raises(InputError, match=r"eval.observables: unknown observable 'spin'; valid: "
                                         r"s2, dipole, density, forces"):
        config_from_dict({"atoms": H2(1.4)}, overrides=("eval.observables=[spin]",))


def test_s2_broken_symmetry_uhf_matches_pyscf(x64):
    hf, s2_ref = _broken_symmetry_uhf(4.0)
    assert 0.8 < s2_ref < 1.05                 # strongly contaminated
    setup = _hf_setup(H2(4.0), hf=hf)
    s2 = _run(setup, ("s2",), 128, 256)["s2"]
    print(f"<S2> VMC {s2['mean']:.4f} ± {s2['stderr']:.4f}, PySCF {s2_ref:.4f}")
    assert s2["stderr"] <= 0.2 * s2_ref
    assert abs(s2["mean"] - s2_ref) <= 3 * s2["stderr"]


def test_s2_rhf_singlet_is_zero(x64):
    s2 = _run(_hf_setup(H2(1.4)), ("s2",), 64, 16, burn_in=5)["s2"]
    assert abs(s2["mean"]) < 1e-6 and s2["stderr"] < 1e-6


def test_s2_random_pair_subset_is_unbiased(x64):
    """Be RHF (4 up-down pairs): S²ψ = 0 pointwise for a singlet (the all-pairs estimate is 0
    at every sample, as for H₂ above), so a random subset of 1 pair per walker is 0 on average
    (its mean over the pair choice is the full sum) with a non-zero spread."""
    be = [{"symbol": "Be", "position": [0.0, 0.0, 0.0]}]
    setup = _hf_setup(be, extra=("eval.s2_max_pairs=1", "pretrain.basis=sto-3g"))
    sub = _run(setup, ("s2",), 64, 32, burn_in=10)["s2"]
    print(f"Be <S2> one random pair: {sub['mean']:.4f} ± {sub['stderr']:.4f}")
    assert 1e-3 < sub["stderr"] < 0.1 and abs(sub["mean"]) <= 3 * sub["stderr"]


def test_s2_trained_he_is_zero(x64):
    """The trained He FermiNet (tests/data/he_trained.h5; full determinants, so ψ is not
    symmetric in r1, r2 by construction) is a singlet."""
    d = {"atoms": [{"symbol": "He", "position": [0.0, 0.0, 0.0]}],
         "ansatz": {"hidden_one": [32, 32, 32], "hidden_two": [8, 8, 8], "determinants": 8}}
    setup = build(config_from_dict(d, name="He"))
    params = load_he_trained(setup, jnp.float32)
    w = init_walkers(jax.random.PRNGKey(0), setup.molecule, 128, 1.0, setup.dtype)
    res = evaluate(setup, params, w, 0.3, steps=20, burn_in=20, key=jax.random.PRNGKey(1),
                   observables=("s2",))
    s2 = summarize_observables(res.observables, {"walkers": 128})["s2"]
    print(f"He <S2> {s2['mean']:.5f} ± {s2['stderr']:.5f}")
    assert s2["stderr"] < 0.02
    assert abs(s2["mean"]) <= 3 * s2["stderr"] + 1e-4


def test_dipole_heh_cation_matches_pyscf(x64):
    """HeH⁺ (an ion: the dipole is about the centre of nuclear charge R_c, i.e. PySCF's
    origin-0 dipole minus q·R_c). LiH's valence electrons equilibrate too slowly for a
    test-sized chain with one all-electron proposal width (see README, Observables)."""
    atoms = [{"symbol": "He", "position": [0.0, 0.0, 0.0]},
             {"symbol": "H", "position": [0.0, 0.0, 1.4632]}]
    cfg = config_from_dict({"atoms": atoms, "charge": 1},
                           overrides=("ansatz.name=hf", "pretrain.basis=cc-pvdz",
                                      "sampler.moves=4"))
    setup = build(cfg)
    from pyscf import scf
    mf = scf.RHF(setup.molecule.to_pyscf("cc-pvdz")).run()
    rc = np.array([0.0, 0.0, 1.4632 / 3.0])
    ref = mf.dip_moment(unit="au", verbose=0) - 1.0 * rc
    d = _run(setup, ("dipole",), 128, 320, burn_in=100)["dipole"]
    mean, err = np.asarray(d["au"]["mean"]), np.asarray(d["au"]["stderr"])
    print(f"dipole VMC {mean} ± {err}, PySCF {ref}")
    assert abs(ref[2]) > 0.3 and np.all(err < 0.03)
    assert np.all(np.abs(mean - ref) <= 3 * err), (mean, err, ref)
    assert np.allclose(np.asarray(d["debye"]["mean"]), mean * 2.541746)


def test_forces_h2_zero_bias_matches_pyscf_gradient(x64):
    r = 2.0
    setup = _hf_setup(H2(r))
    from pyscf import scf
    mf = scf.RHF(setup.molecule.to_pyscf("cc-pvdz")).run()
    ref = -mf.nuc_grad_method().kernel()          # (2, 3) forces, Ha/bohr
    f = _run(setup, ("forces",), 256, 512, seed=5)["forces"]

    def stretch(name):    # (F_0z − F_1z)/2: the force along the bond, both nuclei
        m, e = np.asarray(f[name]["mean"]), np.asarray(f[name]["stderr"])
        return 0.5 * (m[0, 2] - m[1, 2]), 0.5 * np.hypot(e[0, 2], e[1, 2])
    want = 0.5 * (ref[0, 2] - ref[1, 2])
    got = {k: stretch(k) for k in ("hf", "zv", "zv_zb")}
    print({k: f"{m:+.4f} ± {e:.4f}" for k, (m, e) in got.items()}, f"PySCF {want:+.4f}")
    m, e = got["zv_zb"]
    assert e < 3e-3 and abs(m - want) <= 3 * e + 1e-3
    assert got["zv"][1] < 0.2 * got["hf"][1]                   # zero variance works
    assert abs(got["zv"][0] - want) > 3 * got["zv"][1] + 1e-3   # Pulay term is needed
    perp = np.asarray(f["zv_zb"]["mean"])[:, :2]               # no force across the bond
    assert np.all(np.abs(perp) <= 3 * np.asarray(f["zv_zb"]["stderr"])[:, :2] + 1e-3)


def test_density_h_atom_matches_pyscf(x64):
    setup = _hf_setup([{"symbol": "H", "position": [0.0, 0.0, 0.0]}], spin=1,
                      extra=("eval.density_bins=24", "eval.density_rmax=4.0"))
    dens = _run(setup, ("density",), 256, 256)["density"]
    from pyscf import dft, scf
    mol = setup.molecule.to_pyscf("cc-pvdz")
    mf = scf.ROHF(mol).run()
    dm = mf.make_rdm1().sum(axis=0)
    edges = np.asarray(dens["radial_edges_bohr"])
    gx, gw = np.polynomial.legendre.leggauss(40)
    want = []
    for a, b in zip(edges[:-1], edges[1:]):    # spherical (1s): ∫ 4π r² ρ(r ẑ) dr per shell
        r = 0.5 * (b - a) * gx + 0.5 * (b + a)
        pts = np.stack([np.zeros_like(r), np.zeros_like(r), r], axis=1)
        rho = dft.numint.eval_rho(mol, mol.eval_gto("GTOval_sph", pts), dm)
        want.append(np.sum(0.5 * (b - a) * gw * 4 * np.pi * r ** 2 * rho)
                    / (4 * np.pi / 3 * (b ** 3 - a ** 3)))
    want = np.asarray(want)
    m, e = np.asarray(dens["radial"]["mean"]), np.asarray(dens["radial"]["stderr"])
    use = want * 4 * np.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3) > 2e-3
    chi2 = float(np.mean(((m - want) / e)[use] ** 2))
    print(f"density chi2/bin {chi2:.2f} over {use.sum()} bins; outside {dens['radial_outside_share']:.2g}")
    assert use.sum() >= 15 and 0.3 < chi2 < 2.0
    assert 0 < dens["radial_outside_share"] < 0.03      # exact H: P(r > 4) = 41 e⁻⁸ = 0.014


def test_log_psi_at_equals_log_psi_and_nuclear_gradient():
    """The nuclei as traced input change nothing at the molecule's own positions, and
    ∂ log|ψ|/∂R matches a finite difference (FermiNet and Psiformer)."""
    for name in ("ferminet", "psiformer"):
        with jax.enable_x64(True):
            cfg = config_from_dict({"atoms": H2(1.4)}, overrides=(f"ansatz.name={name}", "run.x64=true",
                                                                 "optim.solver=adam"),
                                   preset="tiny")
            s = build(cfg)
            params = jax.jit(s.ansatz.init)(jax.random.PRNGKey(0))
            x = init_walkers(jax.random.PRNGKey(1), s.molecule, 1, 1.0, jnp.float64)[0]
            atoms = jnp.asarray(s.molecule.positions)
            at = jax.jit(lambda a: s.ansatz.log_psi_at(params, x, a)[1])
            assert np.allclose(jax.jit(s.ansatz.log_psi)(params, x)[1], at(atoms), atol=0,
                               rtol=1e-14)
            g = jax.jit(jax.grad(at))(atoms)
            h = 1e-5
            da = jnp.zeros_like(atoms).at[1, 2].set(h)  # noqa: E501
            fd = (at(atoms + da) - at(atoms - da)) / (2 * h)
            assert abs(float(g[1, 2]) - float(fd)) < 1e-6


def test_run_eval_analyze_with_observables(x64, tmp_path, monkeypatch, capsys):
    """`vmc run` with eval.observables writes them to eval.h5 and summary.json; a walker with
    a non-finite E_L is left out of every observable and counted; `vmc eval --observables`
    adds a group; `vmc analyze` reports them and plots the density."""
    import yaml

    from vmc import analyze, h5io
    from vmc.run import eval_run, train_run
    (tmp_path / "h2.yaml").write_text(yaml.safe_dump({"atoms": H2(1.4)}))
    from vmc.config import load_config
    cfg = load_config(tmp_path / "h2.yaml", overrides=(
        "ansatz.name=hf", "sampler.walkers=32", "sampler.moves=2", "sampler.burn_in=5",
        "eval.steps=16", "eval.burn_in=2", "eval.observables=s2,dipole,density,forces",
        "run.progress=false"))
    out = tmp_path / "run"
    monkeypatch.setenv("VMC_FAULT_INJECT", "eval_nan_walkers=2@all")
    assert train_run(cfg, out, log=lambda m: None) == 0
    monkeypatch.delenv("VMC_FAULT_INJECT")
    with h5io.open_read(out / "eval.h5") as f:
        g = f["eval_000"]
        assert g["force_zv"].shape == (16, 2, 3) and g["density_radial"].shape == (16, 40)
        assert np.all(g["s2_nonfinite"][()] == 2) and np.all(g["forces_nonfinite"][()] == 2)
    summary = json.loads((out / "summary.json").read_text())
    obs = summary["observables"]
    assert obs["s2"]["nonfinite_samples"] == 32 and abs(obs["s2"]["mean"]) < 1e-6
    assert len(obs["forces"]["zv_zb"]["mean"]) == 2 and "debye" in obs["dipole"]
    assert analyze.main([str(out)]) == 0
    assert "<S^2> = " in capsys.readouterr().out and (out / "density.png").is_file()
    assert eval_run(out, steps=16, burn_in=2, observables="dipole", log=lambda m: None) == 0
    with pytest.raises(InputError, match="--observables: unknown observable 'bogus'"):
        eval_run(out, steps=16, observables="bogus", log=lambda m: None)
    assert analyze.main([str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows[0]["evaluations"][0]["observables"]) == {"s2", "dipole", "density", "forces"}
    assert set(rows[0]["evaluations"][1]["observables"]) == {"dipole"}


def test_dipole_norm_is_the_norm_of_the_mean_not_the_mean_norm():
    """|d| from `summarize_observables`: a zero dipole with per-step noise 0.06 e·bohr per
    component (256 walkers of a unit-variance atom) gives |⟨d⟩| of the noise's size, not the
    per-step |d_t| ≈ 0.1; a dipole of (0.3, 0.4, 0) gives 0.5 within 4 standard errors."""
    from vmc.obs_report import summarize_observables
    rng = np.random.default_rng(0)
    noise = 0.06 * rng.normal(size=(4000, 3))
    zero = summarize_observables({"dipole": noise}, {"walkers": 256})["dipole"]
    per_step = np.mean(np.linalg.norm(noise, axis=1))
    assert per_step > 0.08
    assert zero["norm_au"]["mean"] < 0.01 and zero["norm_au"]["stderr"] < 0.002
    shifted = summarize_observables({"dipole": noise + np.array([0.3, 0.4, 0.0])},
                                    {"walkers": 256})["dipole"]["norm_au"]
    assert abs(shifted["mean"] - 0.5) < 4 * shifted["stderr"], shifted
    assert 0.0005 < shifted["stderr"] < 0.002      # ≈ 0.06/√4000


def test_observable_errors_without_a_plateau_print_as_lower_bounds():
    """A strongly correlated series too short for reblocking to find a plateau gets its
    error printed as a lower bound (`± >=`, as the energy's) and counted in a note; every
    component of the dipole and forces carries its plateau flag; independent samples print
    plain `±` and no note."""
    from vmc.obs_report import format_lines, summarize_observables
    rng = np.random.default_rng(0)

    def ar1(n, phi, shape=()):
        x = np.zeros((n,) + shape)
        for t in range(1, n):
            x[t] = phi * x[t - 1] + rng.normal(size=shape)
        return x
    walkers = {"walkers": 64}
    slow = summarize_observables({"s2": 0.75 + 0.01 * ar1(64, 0.995),
                                  "dipole": ar1(64, 0.995, (3,))}, walkers)
    assert not slow["s2"]["plateau"]
    assert len(slow["dipole"]["au"]["plateau"]) == 3
    lines = format_lines(slow)
    assert lines[0].startswith("<S^2> = ") and "± >=" in lines[0]
    assert "|d| = " in lines[1] and "± >=" in lines[1].split("|d| = ")[1]
    assert lines[-1].startswith("note: ") and "lower bounds" in lines[-1]
    assert "density" not in lines[-1]          # none was sampled
    density = {"radial": {"mean": [1.0, 2.0], "stderr": [0.1, 0.1], "plateau": [False, True]},
               "axial": {"mean": [1.0], "stderr": [0.1], "plateau": [False]},
               "radial_edges_bohr": [0.0, 1.0, 2.0], "radial_outside_share": 0.0,
               "axial_outside_share": 0.0}
    note = format_lines({"density": density}, steps=1000, run_dir="runs/X")[-1]
    assert note.startswith("note: 2 of 3 density bins are lower bounds")
    assert "marked ± >= above" not in note      # no error bar printed above is one
    assert "`vmc eval runs/X --steps 4000`" in note
    fast = summarize_observables({"s2": 0.75 + 0.01 * rng.normal(size=4096),
                                  "dipole": rng.normal(size=(4096, 3))}, walkers)
    assert fast["s2"]["plateau"] and all(fast["dipole"]["au"]["plateau"])
    lines = format_lines(fast)
    assert not any(">=" in line for line in lines) and not lines[-1].startswith("note: ")
