"""The size rule (vmc.size_rule): the defaults that depend on the system, the reason `vmc
check` prints for each setting, `vmc presets`, and `run.keep_steps` (checkpoints that are
never pruned)."""

import pathlib

import pytest
import yaml

from vmc import checkpoint as ckpt
from vmc import size_rule
from vmc.cli import main
from vmc.config import PRESETS, default_steps, load_config
from vmc.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEMS = ROOT / "systems"


def _section(path, preset=None, overrides=()):
    cfg = load_config(path, preset=preset, overrides=tuple(overrides))
    text = size_rule.file_choices(cfg, path, preset=preset, overrides=overrides)
    return dict(line.strip().split(": ", 1) for line in text.splitlines()[1:])


@pytest.mark.parametrize("name, electrons, steps, pretrain", [
    ("He", 2, "1000 (default for <= 3 electrons without an ECP)",
     "0 (default for <= 2 electrons: no pretraining)"),
    ("Li", 3, "1000 (default for <= 3 electrons without an ECP)",
     "1000 (default for 3-5 electrons)"),
    ("Be", 4, "4000 (default for > 3 electrons)", "1000 (default for 3-5 electrons)"),
    ("N", 7, "4000 (default for > 3 electrons)", "3000 (default for > 5 electrons (CH4: "),
    ("CH4", 10, "4000 (default for > 3 electrons)", "3000 (default for > 5 electrons (CH4: "),
])
def test_steps_and_pretraining_follow_the_electron_count(name, electrons, steps, pretrain):
    path = SYSTEMS / f"{name}.yaml"
    found = _section(path)
    assert found["optim.steps"] == steps
    assert found["pretrain.steps"].startswith(pretrain)
    cfg = load_config(path)   # the value the run resolves is the one the rule reports
    assert cfg.optim.steps == int(steps.split()[0]) == default_steps(electrons)
    assert cfg.pretrain.steps == int(pretrain.split()[0])
    text = size_rule.file_choices(cfg, path)
    assert text.splitlines()[0].startswith(f"# size rule ({electrons} electrons, no ECP)")


def test_settings_without_a_size_rule_say_so():
    found = _section(SYSTEMS / "N.yaml")
    one = "the same for every size: no size rule measured yet, issue #14"
    assert found["ansatz.hidden_one"] == f"[32, 32, 32] (default, {one})"
    assert found["ansatz.determinants"] == f"8 (default, {one})"
    assert found["sampler.walkers"].startswith("512 (default for > 5 electrons (4000 steps")
    assert found["optim.lr"] == f"0.2 (default for SR solvers (sample), {one})"
    assert found["optim.lr_decay_steps"] == (f"1000.0 (default, {one}; t0 of lr/(1 + t/t0), "
                                             f"independent of optim.steps)")
    assert found["optim.damping"] == ("0.1 (default for > 5 electrons with sample in runs "
                                      "of < 8000 steps (4000 steps: C +19.4, N +18.5 mHa; "
                                      "1e-3: +27.1, +60.7))")
    assert found["optim.clip"] == f"5.0 (default all-electron, {one})"
    assert found["eval.steps"] == (f"2000 (default, {one}; `vmc eval RUN --steps N` "
                                   f"evaluates longer)")
    assert found["eval.walkers"] == "512 (default: sampler.walkers)"
    assert found["pretrain.basis"] == "cc-pvdz (default all-electron)"
    assert found["ansatz.jastrow"] == "false (default for ferminet: no Jastrow)"
    # every reported setting but the ECP rule, which an all-electron run does not use
    assert list(found) == [k for k in size_rule.REPORTED if k != "hamiltonian.ecp_rule"]


@pytest.mark.parametrize("name, overrides, value, reason", [
    ("He", [], 0.001, "default for <= 5 electrons"),
    ("Be", [], 0.001, "default for <= 5 electrons"),
    ("C", [], 0.1, "default for > 5 electrons with sample in runs of < 8000 steps"),
    ("C", ["optim.steps=7999"], 0.1, "default for > 5 electrons with sample in runs of < 8000"),
    ("C", ["optim.steps=8000"], 0.001, "default for 6-7 electrons in runs of >= 8000 steps"),
    ("N", ["optim.steps=16000", "optim.solver=cg"], 0.001, "default for 6-7 electrons in runs "
                                                          "of >= 8000 steps"),
    ("O", ["optim.steps=16000"], 0.1, "default for > 7 electrons with sample, whatever"),
    ("O", [], 0.1, "default for > 7 electrons with sample, whatever"),
    ("N", ["optim.solver=cg"], 0.1, "default for > 5 electrons with cg"),
    ("O_ccecp", ["optim.steps=16000"], 0.001, "default with an ECP"),
    ("N", ["optim.solver=kfac"], 0.001, "default for kfac, the same for every size"),
    ("N", ["optim.damping=0.02"], 0.02, "set by --set"),
    ("O_ccecp", [], 0.001, "default with an ECP, whatever the electron count"),
])
def test_damping_follows_the_electron_count_and_the_solver(name, overrides, value, reason):
    path = SYSTEMS / f"{name}.yaml"
    found = _section(path, overrides=overrides)
    assert found["optim.damping"].startswith(f"{value} ({reason}")
    assert load_config(path, overrides=tuple(overrides)).optim.damping == value


@pytest.mark.parametrize("name, preset, value, reason", [
    ("He", None, 256, "default for <= 5 electrons"),
    ("Be", None, 256, "default for <= 5 electrons"),
    ("C", None, 512, "default for > 5 electrons"),
    ("CH4", None, 512, "default for > 5 electrons"),
    ("O_ccecp", None, 512, "default for > 5 valence electrons with an ECP"),
    ("Mg_ccecp", None, 256, "default for <= 5 valence electrons with an ECP"),
    ("N", "tiny", 32, "preset tiny"),
])
def test_walkers_follow_the_electron_count(name, preset, value, reason):
    path = SYSTEMS / f"{name}.yaml"
    found = _section(path, preset=preset)
    assert found["sampler.walkers"].startswith(f"{value} ({reason}")
    cfg = load_config(path, preset=preset)
    assert cfg.sampler.walkers == value and cfg.eval.walkers == value
    assert load_config(path, overrides=("sampler.walkers=64",)).sampler.walkers == 64


def test_an_ecp_gets_the_ecp_defaults():
    found = _section(SYSTEMS / "O_ccecp.yaml")
    assert found["optim.steps"] == "4000 (default with an ECP, whatever the electron count)"
    assert found["optim.clip"] == "null (default with an ECP: no clipping (README \"Pseudopotentials\"))"
    assert found["pretrain.basis"] == "ccecp-cc-pvdz (default with an ECP)"


@pytest.mark.parametrize("name, l_max, rule", [
    ("O_ccecp", 0, "tetrahedron"), ("Mg_ccecp", 1, "octahedron"), ("S_ccecp", 1, "octahedron"),
])
def test_the_ecp_rule_follows_the_largest_nonlocal_channel(name, l_max, rule):
    """The rule is the lowest-degree one exact to degree >= 2 l_max + 1 (ccECP: O has only an
    s channel, Mg and S s and p; the degrees are tests/test_ecp.py's), what `vmc check`
    reports and the run resolves; --set wins."""
    from vmc.hamiltonian import ecp_l_max
    path = SYSTEMS / f"{name}.yaml"
    cfg = load_config(path)
    assert ecp_l_max(cfg.build_molecule()) == l_max
    assert cfg.hamiltonian.ecp_rule == rule
    assert _section(path)["hamiltonian.ecp_rule"].startswith(
        f"{rule} (default for non-local ECP channels up to l = {l_max}")
    found = _section(path, overrides=["hamiltonian.ecp_rule=icosahedron"])
    assert found["hamiltonian.ecp_rule"] == "icosahedron (set by --set)"
    # an explicit null leaves the value to the rule, and says so
    found = _section(path, overrides=["hamiltonian.ecp_rule=icosahedron",
                                      "hamiltonian.ecp_rule=null"])
    assert found["hamiltonian.ecp_rule"].startswith(f"{rule} (default for non-local"), found
    # an all-electron run keeps the icosahedron it always wrote (unused; config digests
    # of all-electron runs are unchanged)
    assert load_config(SYSTEMS / "N.yaml").hamiltonian.ecp_rule == "icosahedron"


def test_set_beats_the_file_which_beats_the_preset(tmp_path):
    path = tmp_path / "mol.yaml"
    data = yaml.safe_load((SYSTEMS / "He.yaml").read_text())
    path.write_text(yaml.safe_dump({**data, "optim": {"lr": 0.1, "steps": 30}}))
    found = _section(path, preset="tiny", overrides=["optim.steps=50"])
    assert found["optim.steps"] == "50 (set by --set)"
    assert found["optim.lr"] == "0.1 (set in mol.yaml)"
    assert found["ansatz.determinants"] == "2 (preset tiny)"
    assert found["eval.steps"] == "20 (preset tiny)"
    assert found["pretrain.steps"] == "0 (preset tiny)"
    found = _section(path, preset="paper")
    assert found["optim.steps"] == "30 (set in mol.yaml)"
    assert found["optim.lr_decay_steps"] == "10000.0 (preset paper)"
    assert found["sampler.walkers"] == "4096 (preset paper)"


def test_vmc_check_prints_the_size_rule(capsys):
    assert main(["check", str(SYSTEMS / "He.yaml"), "--preset", "tiny",
                 "--set", "optim.damping=0.01"]) == 0
    out = capsys.readouterr().out
    assert "\n# size rule (2 electrons, no ECP): each setting that may scale" in out
    assert "\n  optim.steps: 10 (preset tiny)\n" in out
    assert "\n  optim.damping: 0.01 (set by --set)\n" in out
    assert "\n  ansatz.jastrow: false (default for ferminet: no Jastrow)" in out


def test_presets_print_what_they_set(capsys):
    assert main(["presets", "tiny"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == ("# preset tiny: tiny network and few steps: smoke tests and CI "
                        "(not an accurate energy)")
    assert "  optim.steps: 10" in lines and "  ansatz.hidden_one: [8, 8]" in lines
    assert "  hamiltonian.f64_rescue: 0" in lines
    assert len([x for x in lines if x.startswith("  ")]) == sum(len(v) for v in
                                                                PRESETS["tiny"].values())
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "# preset paper: FermiNet's published recipe" in out
    assert "  optim.steps: 200000" in out and "  optim.lr_decay_steps: 10000.0" in out


def test_an_unknown_preset_is_one_line_and_exit_2(capsys):
    assert main(["presets", "tinny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preset: unknown preset 'tinny'; valid: paper, tiny")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(InputError, match="preset: unknown preset 'big'"):
        size_rule.describe_presets(["big"])


def test_keep_steps_are_validated_and_sorted():
    he = SYSTEMS / "He.yaml"
    cfg = load_config(he, overrides=("run.keep_steps=[4000, 1000, 1000]",))
    assert cfg.run.keep_steps == (1000, 4000)
    assert load_config(he).run.keep_steps == ()
    for bad in ("[0]", "[1.5]", "[true]", "5"):
        with pytest.raises(InputError, match=r"^run\.keep_steps: expected a list"):
            load_config(he, overrides=(f"run.keep_steps={bad}",))


def test_prune_keeps_protected_steps(tmp_path):
    for step in range(1, 7):
        ckpt.checkpoint_path(tmp_path, step).write_bytes(b"")
    removed = ckpt.prune(tmp_path, 2, protect=(2, 3))
    assert sorted(p.name for p in removed) == ["ckpt_000001.h5", "ckpt_000004.h5"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "ckpt_000002.h5", "ckpt_000003.h5", "ckpt_000005.h5", "ckpt_000006.h5"]
    ckpt.prune(tmp_path, 1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt_000006.h5"]
