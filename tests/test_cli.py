"""`vmc` command line: bad input gives exit 2, one `error:` line naming the field, and no files;
`vmc check` output; Ångström input; one end-to-end `vmc run` on H2."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

import vmc.hf
from helpers import host_devices_env
from vmc import h5io
from vmc.cli import main
from vmc.config import load_config
from vmc.errors import InputError
from vmc.precheck import DirectoryGuard
from vmc.system import ANGSTROM_TO_BOHR

# one worker runs this module: its module fixtures are built once (pyproject: loadgroup)
pytestmark = pytest.mark.xdist_group("cli")

DATA = pathlib.Path(__file__).parent / "data"
H2 = DATA / "h2_tiny.yaml"
H2_REFERENCE = -1.1744757142   # Pachucki 2010, shared/reference/energies.yaml
# tiny H2 runs: 2 steps, 2 pretraining steps in a minimal basis, a 16-step evaluation
TINY_RUN = ["--preset", "tiny", "--set", "optim.steps=2", "--set", "eval.steps=16",
            "--set", "pretrain.steps=2", "--set", "pretrain.basis=sto-3g"]


@pytest.fixture(autouse=True)
def _restore_x64():
    """`vmc run/check` switch float64 on process-wide; give other tests their default back."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


def _call(argv):
    """main(argv) in-process; argparse's SystemExit becomes the exit code."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def _write(tmp_path, data, name="mol.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _atoms(*atoms):
    return [{"symbol": s, "position": list(p)} for s, p in atoms]


HE = _atoms(("He", (0.0, 0.0, 0.0)))

# (id, config file content (None: no file), extra argv, words the one error line must contain)
BAD_INPUTS = [
    ("unknown element", {"atoms": _atoms(("Hee", (0, 0, 0)))}, [],
     ["molecule.atoms[0].symbol", "'Hee'", "did you mean 'He'"]),
    ("unknown config key", {"atoms": HE, "optim": {"stpes": 10}}, [],
     ["optim.stpes", "did you mean 'steps'"]),
    ("spin parity", {"atoms": HE, "spin": 1}, [], ["molecule.spin", "2 electrons"]),
    ("spin too large", {"atoms": _atoms(("Li", (0, 0, 0))), "spin": 5}, [],
     ["molecule.spin", "exceeds"]),
    ("charge eats all electrons", {"atoms": HE, "charge": 2}, [], ["molecule.charge"]),
    ("charge above nuclear charge", {"atoms": HE, "charge": 5}, [], ["molecule.charge"]),
    ("two nuclei at one point",
     {"atoms": _atoms(("H", (0.0, 0.0, 0.5)), ("H", (0.0, 0.0, 0.5)))}, [],
     ["molecule.atoms", "0 bohr apart", "valid: nuclei at least 0.001 bohr apart"]),
    ("top-level unit typo", {"atoms": HE, "unit": "angstrom"}, [],
     ["unit: unknown setting", "units", "did you mean 'units'"]),
    ("walkers not an integer", {"atoms": HE}, ["--set", "sampler.walkers=32.5"],
     ["sampler.walkers", "expected an integer"]),
    ("missing file", None, [], ["config file", "not found"]),
    ("wrong type", {"atoms": HE, "sampler": {"walkers": "many"}}, [],
     ["sampler.walkers", "'many'"]),
    ("out of range", {"atoms": HE, "sampler": {"walkers": 0}}, [],
     ["sampler.walkers", "too small"]),
    ("unknown unit", {"atoms": HE, "units": "nm"}, [], ["molecule.units", "'nm'"]),
    ("invalid --set syntax", {"atoms": HE}, ["--set", "optim.steps"], ["--set", "optim.steps"]),
    ("--set unknown key", {"atoms": HE}, ["--set", "sampler.walker=4"],
     ["sampler.walker", "did you mean 'walkers'"]),
    ("--set wrong type", {"atoms": HE}, ["--set", "optim.lr=fast"], ["optim.lr", "'fast'"]),
    ("unknown preset", {"atoms": HE}, ["--preset", "tinny"], ["--preset", "did you mean 'tiny'"]),
    ("invalid YAML", "atoms: [ {symbol: He\n", [], ["config file", "invalid YAML"]),
    ("negative clip", {"atoms": HE}, ["--set", "optim.clip=-1"], ["optim.clip", "> 0.0 or null"]),
    ("zero norm constraint", {"atoms": HE}, ["--set", "optim.norm_constraint=0"],
     ["optim.norm_constraint", "> 0.0"]),
    ("negative max_minutes", {"atoms": HE}, ["--set", "run.max_minutes=-1"],
     ["run.max_minutes", "> 0.0"]),
    ("negative pretrain steps", {"atoms": HE}, ["--set", "pretrain.steps=-1"],
     ["pretrain.steps", ">= 0"]),
    ("adam b1 of 1", {"atoms": HE}, ["--set", "optim.adam_b1=1.0"], ["optim.adam_b1", "< 1.0"]),
    ("zero steps", {"atoms": HE}, ["--set", "optim.steps=0"], ["optim.steps", ">= 1"]),
    ("eval too short to reblock", {"atoms": HE}, ["--set", "eval.steps=5"],
     ["eval.steps", ">= 16"]),
    ("layer lists of unequal length", {"atoms": HE}, ["--set", "ansatz.hidden_one=[8,8]"],
     ["ansatz.hidden_two", "3 layers", "has 2"]),
    ("kfac without damping", {"atoms": HE}, ["--set", "optim.solver=kfac", "--set",
                                             "optim.damping=0"], ["optim.damping", "kfac"]),
    ("molecule keys in two places", {"molecule": {"atoms": HE}, "charge": 1}, [],
     ["charge", "put them all under `molecule`"]),
    ("unknown basis", {"atoms": _atoms(("Li", (0, 0, 0))), "spin": 1,
                       "pretrain": {"basis": "cc-pvXz"}}, [],
     ["pretrain.basis", "'cc-pvXz'", "cc-pvdz"]),
    ("Hartree-Fock impossible in the basis",
     {"atoms": HE, "spin": 2, "pretrain": {"steps": 2, "basis": "sto-3g"}}, [],
     ["pretrain.basis", "Hartree-Fock", "spin 2", "Nocc (2) > Nmo (1)", "cc-pvdz"]),
    ("kfac with the hf ansatz", {"atoms": HE}, ["--set", "ansatz.name=hf", "--set",
                                                "optim.solver=kfac-cg"],
     ["optim.solver", "'kfac-cg'", "valid with hf: sample, dense, adam, cg, spring"]),
    ("non-number in a float setting", {"atoms": HE}, ["--set", "optim.damping=1e-3x"],
     ["optim.damping", "'1e-3x'"]),
    # PyYAML keeps the last of two equal keys silently (spin 1 here; a triplet for H2)
    ("key given twice", "atoms: [{symbol: He, position: [0, 0, 0]}]\nspin: 0\nspin: 1\n", [],
     ["error: spin: given twice in '", "mol.yaml' (lines 2 and 3)", "valid: one value per key"]),
    ("key given twice in a section",
     "molecule:\n  atoms: [{symbol: He, position: [0, 0, 0]}]\n  spin: 0\noptim:\n"
     "  lr: 0.1\n  steps: 5\n  lr: -1\n", [],
     ["optim.lr: given twice", "(lines 5 and 7)"]),
]


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                                   case, command):
    _, content, extra, words = case
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "missing.yaml" if content is None else _write(tmp_path, content)
    out = tmp_path / "run"
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [command, config, *extra] + (["--out", out] if command == "run" else [])
    assert _call(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert captured.out == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nor runs/<stem> in cwd


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_directory_as_config_is_named_a_directory(tmp_path, capsys, monkeypatch, command):
    """`vmc run systems` said "config file 'systems': not found"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "systems").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _call([command, "systems/"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("error: config file 'systems': is a directory; valid: a molecule "
                            ".yaml file, or an .xyz file (Å), e.g. systems/H2.yaml\n")
    assert captured.out == "" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_argparse_errors_exit_2_with_one_line(capsys):
    for argv in (["run"], ["frobnicate"], ["run", str(H2), "--no-such-flag"]):
        assert _call(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err


def test_check_prints_parameters_and_spin_assignment(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, {"atoms": _atoms(("O", (0, 0, 0)), ("H", (1.43, 1.11, 0)),
                                               ("H", (-1.43, 1.11, 0)))})
    assert _call(["check", config, "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "n_electrons: 10  n_up: 5  n_down: 5" in out
    assert "atom 0 O  Z=8: 4 up, 4 down" in out
    assert sorted(line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.startswith("  atom") and " H " in line) == ["0 up, 1 down",
                                                                     "1 up, 0 down"]
    # FermiNet, tiny preset, 3 atoms, 5+5 electrons, full determinants, K = 2:
    # layer 0: one (12 + 2·(12 + 4) → 8), two (4 → 4); layer 1: one (8 + 2·(8 + 4) → 8);
    # orbitals 2 × (8 → 2·10); isotropic envelopes 2 × (π, σ: 3 × 20)
    n_params = ((44 + 1) * 8 + (4 + 1) * 4) + ((32 + 1) * 8) + 2 * (9 * 20) + 2 * (2 * 3 * 20)
    assert f"parameters: {n_params}\n" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mol.yaml"]
    assert "warning: the estimated memory" not in out
    # a 10-electron FermiNet on this CPU: the local energy in the rule's 32-walker chunks
    assert "local energy: 32 walkers per device at a time (hamiltonian.chunk_walkers null" in out
    assert _call(["check", config, "--preset", "tiny", "--set", "ansatz.name=psiformer"]) == 0
    assert "local energy: all walkers at once (hamiltonian.chunk_walkers null" in (
        capsys.readouterr().out)


def test_check_warns_when_the_memory_estimate_exceeds_the_device(tmp_path, capsys):
    """A dense solve of the paper-size network (p ≈ 700k: the p × p matrix alone is ~4 TB)
    is flagged against this machine's memory; a tiny run's estimate does not round to 0."""
    from vmc.check import device_memory_mb
    assert device_memory_mb() > 100
    config = _write(tmp_path, {"atoms": _atoms(("N", (0, 0, 0)), ("N", (2.07, 0, 0)))})
    assert _call(["check", config, "--preset", "paper", "--set", "optim.solver=dense"]) == 0
    out = capsys.readouterr().out
    assert "warning: the estimated memory per step" in out and "matrix-free" in out
    assert _call(["check", config, "--preset", "tiny", "--set", "sampler.walkers=2"]) == 0
    out = capsys.readouterr().out
    assert "estimated memory per step: < 1 MB" in out or "estimated memory per step: 1" in out
    assert "warning: the estimated memory" not in out


def test_angstrom_input_is_converted_to_bohr(tmp_path):
    config = _write(tmp_path, {"units": "angstrom",
                               "atoms": _atoms(("H", (0, 0, 0)), ("H", (0, 0, 0.74)))})
    mol = load_config(config).build_molecule()
    np.testing.assert_allclose(mol.positions, [[0, 0, 0], [0, 0, 0.74 * 1.8897261246]],
                               rtol=1e-15)
    assert ANGSTROM_TO_BOHR == 1.8897261246
    np.testing.assert_allclose(mol.nuclear_repulsion, 1 / (0.74 * ANGSTROM_TO_BOHR), rtol=1e-14)
    bohr = load_config(_write(tmp_path, {"atoms": _atoms(("H", (0, 0, 0)), ("H", (0, 0, 0.74)))},
                              "bohr.yaml")).build_molecule()
    assert bohr.positions[1, 2] == 0.74


def test_defaults_that_depend_on_the_system_are_resolved(tmp_path):
    """Steps, pretraining and the Psiformer's Jastrow factor follow the electron count and ansatz."""
    h2 = load_config(_write(tmp_path, {"atoms": _atoms(("H", (0, 0, 0)), ("H", (0, 0, 1.4)))},
                            "h2.yaml"))
    lih = load_config(_write(tmp_path, {"atoms": _atoms(("Li", (0, 0, 0)), ("H", (0, 0, 3.015)))},
                             "lih.yaml"))
    assert (h2.optim.steps, h2.pretrain.steps, h2.ansatz.jastrow) == (1000, 0, False)
    assert (lih.optim.steps, lih.pretrain.steps) == (4000, 1000)
    psi = load_config(lih_path := tmp_path / "lih.yaml", overrides=("ansatz.name=psiformer",))
    assert psi.ansatz.jastrow is True
    off = load_config(lih_path, overrides=("ansatz.name=psiformer", "ansatz.jastrow=false",
                                           "optim.steps=7"))
    assert (off.ansatz.jastrow, off.optim.steps) == (False, 7)


@pytest.fixture(scope="module")
def h2_run(tmp_path_factory):
    """One `vmc run tests/data/h2_tiny.yaml --preset tiny --out <dir>`, shared by the tests."""
    before = jax.config.jax_enable_x64
    out = tmp_path_factory.mktemp("cli") / "h2"
    code = _call(["run", H2, "--preset", "tiny", "--out", out])
    jax.config.update("jax_enable_x64", before)
    return code, out


def test_run_end_to_end_on_h2(h2_run):
    code, out = h2_run
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    energy = summary["energy_ha"]
    assert np.isfinite(energy) and np.isfinite(summary["energy_stderr_ha"])
    # H2's Hartree-Fock error is 40.9 mHa: a run no better than HF (or a broken kinetic
    # energy) fails; 300 tiny-preset steps and 20 x 32 samples land within ~5 sigma of exact
    assert abs(energy - H2_REFERENCE) < 0.025, summary
    assert summary["reference_ha"] == H2_REFERENCE and summary["reference_note"] is None
    assert summary["hamiltonian"] == summary["reference_hamiltonian"] == "all-electron"
    assert (summary["n_up"], summary["n_down"]) == (1, 1)
    assert abs(summary["deviation_mha"] - 1000 * (energy - H2_REFERENCE)) < 1e-6
    reloaded = load_config(out / "config.yaml")
    assert reloaded == load_config(H2, preset="tiny")
    assert reloaded.optim.steps == 300 and reloaded.sampler.walkers == 32


def test_run_refuses_a_directory_that_holds_a_run(h2_run, capsys):
    code, out = h2_run
    assert code == 0
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert out / "summary.json" in files and out / "config.yaml" in files
    capsys.readouterr()
    assert _call(["run", H2, "--preset", "tiny", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and "already holds a run" in err[0]
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == files


def _finished(out):
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["energy_ha"]) and summary["train_steps"] == 2
    return summary


@pytest.mark.parametrize("case", ["basis", "hartree-fock"])
def test_corrected_rerun_with_the_same_out_succeeds(tmp_path, capsys, monkeypatch, case):
    """Bad input found by Hartree-Fock (run before pretraining) leaves no run directory, not
    even the parents `vmc run` would create, so the corrected command just works."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "new" / "h2"
    good = ["run", H2, "--out", out, *TINY_RUN]
    if case == "basis":
        bad = good + ["--set", "pretrain.basis=cc-pvXz"]
        words = ["pretrain.basis", "'cc-pvXz'", "valid: a PySCF basis name"]
    else:
        def no_convergence(mol, method):
            raise vmc.hf.SCFError(f"{method.upper()}/{mol.basis} did not converge (default, "
                                  f"level shift 0.5, Newton); last energy -1.0 Ha")
        monkeypatch.setattr(vmc.hf, "_scf", no_convergence)
        bad = good
        words = ["pretrain.basis", "Hartree-Fock", "did not converge", "another pretrain.method",
                 "pretrain.steps: 0"]
    assert _call(bad) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert _call(good) == 0
    assert _finished(out)["n_up"] == 1


def test_late_bad_input_leaves_the_directory_as_found(tmp_path, capsys, monkeypatch):
    """The safety net: an InputError after the run directory was written removes what this
    call created (an existing directory keeps its own files)."""
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def late(*args, **kwargs):
        (out / "train.h5").write_bytes(b"partial")
        raise InputError("pretrain.basis: found late")
    monkeypatch.setattr("vmc.run.train", late)   # after config.yaml is written
    assert _call(["run", H2, "--preset", "tiny", "--out", out]) == 2
    assert capsys.readouterr().err.strip() == "error: pretrain.basis: found late"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_directory_guard(tmp_path):
    made = tmp_path / "a" / "b" / "run"
    with pytest.raises(InputError), DirectoryGuard(made):
        made.mkdir(parents=True)
        (made / "config.yaml").write_text("x")
        raise InputError("x: late")
    assert list(tmp_path.iterdir()) == []
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "old.h5").write_bytes(b"old")
    (run / "config.yaml").write_text("stored")
    with pytest.raises(InputError), DirectoryGuard(run):
        (run / "config.yaml").write_text("rewritten")
        (run / "checkpoints" / "new.h5").write_bytes(b"new")
        (run / "eval.h5").write_bytes(b"new")
        (run / "sub" / "deeper").mkdir(parents=True)
        raise InputError("x: late")
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        "checkpoints", "checkpoints/old.h5", "config.yaml"]
    assert (run / "config.yaml").read_text() == "stored"
    with pytest.raises(RuntimeError), DirectoryGuard(run):   # other errors: files kept
        (run / "eval.h5").write_bytes(b"for inspection")
        raise RuntimeError("crash")
    assert (run / "eval.h5").exists()


def test_walkers_must_split_over_the_devices(tmp_path):
    """Two host devices: 7 walkers (or 9 evaluation walkers) exit 2 before anything is
    written (a 2-device run with walkers that split: tests/test_parallel.py)."""
    env = host_devices_env(2)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "vmc.cli", "run", str(H2), "--out", str(out)] + TINY_RUN
    run = lambda *extra: subprocess.run(argv + list(extra), env=env, capture_output=True,  # noqa: E731
                                        text=True, cwd=tmp_path, timeout=600)
    for extra, line in (
            (["--set", "sampler.walkers=7"], "error: sampler.walkers: 7 walkers do not split "
             "over the 2 devices; valid: a multiple of 2, e.g. 6, 8"),
            (["--set", "eval.walkers=9"], "error: eval.walkers: 9 walkers do not split over "
             "the 2 devices; valid: a multiple of 2, e.g. 8, 10")):
        proc = run(*extra)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [line] and proc.stdout == ""
        assert not out.exists()


def test_hf_ansatz_runs_without_training_and_evaluates_again(tmp_path, capsys):
    """`ansatz.name=hf`: no optimizer step, a step-0 checkpoint that `vmc eval` and
    `--resume` use, an empty train.h5 table, and energies at PySCF's RHF/sto-3g energy."""
    out = tmp_path / "hf"
    argv = ["run", H2, "--preset", "tiny", "--out", out, "--set", "ansatz.name=hf",
            "--set", "pretrain.basis=sto-3g", "--set", "eval.steps=32"]
    assert _call(argv) == 0
    log = capsys.readouterr().out
    e_hf = float(log.split("hartree-fock: RHF/sto-3g energy ")[1].split()[0])
    assert abs(e_hf - -1.116714) < 1e-5          # PySCF RHF/sto-3g at R = 1.4 bohr
    assert "no parameters, so no pretraining or optimization" in log and "step " not in log
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["ckpt_000000.h5"]
    assert h5io.read_stats(out / "train.h5") == {}
    assert _call(["eval", out, "--steps", "32", "--seed", "5"]) == 0
    assert _call(argv + ["--resume"]) == 0
    capsys.readouterr()
    # an error-bar target out of reach: it runs on to --max-steps and says so
    assert _call(["eval", out, "--steps", "32", "--target-stderr-mha", "1e-3",
                  "--max-steps", "80"]) == 0
    log = capsys.readouterr().out
    assert "80 steps x" in log and "ran past 32 steps for the error-bar target 0.001 mHa" in log
    assert "above eval.target_stderr_mha 0.001" in log
    with h5io.open_read(out / "eval.h5") as f:
        assert [int(f[k].attrs["steps"]) for k in sorted(f)] == [32, 32, 32, 80]
        assert len(f["eval_003"]["energy"]) == 80
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ansatz"], summary["n_params"], summary["train_energy_ha"]) == ("hf", 0, None)
    energies = [e["energy_ha"] for e in summary["evaluations"]]
    errors = [e["energy_stderr_ha"] for e in summary["evaluations"]]
    assert len(energies) == 4 and all(np.isfinite(energies))
    for e, se in zip(energies, errors):
        assert abs(e - e_hf) < 5 * se + 0.01 and se < 0.05, (e, se, e_hf)


def test_signal_landing_in_a_gc_callback_still_interrupts():
    """A SIGTERM whose handler runs inside a gc callback (where Python ignores exceptions,
    as with JAX's _xla_gc_callback) is delivered again and stops the code it interrupted."""
    import gc
    import signal
    import time
    from vmc.run import Interrupted, _RaiseOnSignal
    fired = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)   # the handler raises inside this callback
    t0 = time.time()
    with pytest.raises(Interrupted) as err, _RaiseOnSignal():
        gc.callbacks.append(callback)
        try:
            gc.collect()
            while time.time() - t0 < 10:
                pass
        finally:
            gc.callbacks.remove(callback)
    assert fired and err.value.signum == signal.SIGTERM and time.time() - t0 < 5


def test_train_h5_records_the_damping_schedule(tmp_path):
    """The optimizer's diagnostics reach train.h5: λ_t of optim.damping_decay_steps
    (sample), and the KFAC columns (NaN cosines, 0 fall-backs when not measured)."""
    sched = tmp_path / "sched"
    assert _call(["run", H2, *TINY_RUN, "--out", sched, "--set", "optim.steps=4",
                  "--set", "eval.steps=0", "--set", "optim.damping=0.1",
                  "--set", "optim.damping_decay_steps=2", "--set", "optim.damping_min=0.05"]) == 0
    st = h5io.read_stats(sched / "train.h5")
    np.testing.assert_allclose(st["damping"], [max(0.05, 0.1 / (1 + t / 2)) for t in range(4)],
                               rtol=1e-12)
    # the other diagnostics go through the same copy (vmc.train.make_train_step); without
    # optim.kfac_cosines and centring they are NaN and 0
    assert np.isnan(st["cosine_applied"]).all() and (st["fallbacks"] == 0).all()
