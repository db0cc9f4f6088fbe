"""scripts/ladder.py: one training run per rung with its smaller step counts kept
(`run.keep_steps`) and evaluated by `vmc eval` in cut-back copies; the copy's evaluation is
the one a run of that many steps makes; rerunning repeats nothing; the README table."""

import importlib.util
import json
import pathlib

import pytest

from vmc.cli import main as vmc_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ladder", ROOT / "scripts" / "ladder.py")
ladder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ladder)

pytestmark = pytest.mark.xdist_group("ladder")

HE = {"energy": -2.903724377034, "hf_limit": -2.861679996}


def _record(**kw):
    r = {"rung": "C", "steps": 1000, "trained_to": 16000, "settings": dict(ladder.DEFAULTS),
         "n_electrons": 6, "energy_ha": -37.8, "stderr_ha": 0.0005, "plateau": True,
         "reference_ha": -37.845, "reference_kind": "estimated exact", "deviation_mha": 45.0,
         "corr_pct": 71.2, "corr_pct_stderr": 0.3, "wall_s": 1234.4, "n_params": 11000,
         "dtype": "float32", "walkers": 256, "solver": "sample", "eval_steps": 2000,
         "vmc_version": "0.1.0", "git_commit": "abcdef0123", "jax_version": "0.10.2",
         "device_kind": "cpu"}
    return {**r, **kw}


def test_table_rows_and_not_yet_run():
    text = ladder.table([_record(), _record(steps=16000, plateau=False),
                         _record(rung="He", steps=1000, settings={"preset": "tiny", "set": []}),
                         # made with an older version of the defaults: left out
                         _record(steps=4000, settings={"preset": None, "set": []})],
                        {"C": (1000, 4000, 16000), "N2": (1000,)})
    lines = text.splitlines()
    assert lines[2] == ("| C | 6 | 1000 (of 16000) | -37.800000 | 0.500 | -37.845, estimated "
                        "exact | +45.000 | 71.2 ± 0.3 | 1234 | 11000 |")
    assert lines[3] == "| C | | 4000 | not yet run | | | | | | |"
    assert lines[4].startswith("| C | 6 | 16000 | -37.800000 | >=0.500 |")
    assert lines[5] == "| N2 | | 1000 | not yet run | | | | | | |"
    assert not any(line.startswith("| He") for line in lines)   # other settings left out
    assert lines[-1].startswith("Defaults (float32, 256 walkers, solver `sample`, 2000 "
                                "evaluation steps); vmc 0.1.0 (abcdef01)")
    empty = ladder.table([], {"O": (1000,)})
    assert empty.splitlines()[-1] == "Defaults: no rung run yet. Written by scripts/ladder.py."


def test_results_file_later_record_wins(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        _record(energy_ha=-1.0), _record(steps=4000), _record(energy_ha=-2.0))) + "\n")
    got = ladder.read_results(path)
    assert [(r["steps"], r["energy_ha"]) for r in got] == [(1000, -2.0), (4000, -37.8)]
    assert ladder.read_results(tmp_path / "none.jsonl") == []


def test_write_readme_replaces_the_block_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- ladder:begin -->\nold\n<!-- ladder:end -->\nb\n")
    ladder.write_readme(readme, "| new |")
    assert readme.read_text() == "a\n<!-- ladder:begin -->\n| new |\n<!-- ladder:end -->\nb\n"
    (tmp_path / "other.md").write_text("no block\n")
    with pytest.raises(SystemExit, match="no <!-- ladder:begin -->"):
        ladder.write_readme(tmp_path / "other.md", "x")


def test_bad_arguments_exit_2(capsys):
    for argv in (["He", "--steps", "0"], ["He", "--set", "optim.steps=5"]):
        with pytest.raises(SystemExit) as exit_:
            ladder.main(argv)
        assert exit_.value.code == 2
    assert "set by the ladder itself; use --steps" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="rung 'Xx': no systems/Xx.yaml"):
        ladder.main(["Xx"])


def test_rungs_run_at_their_planned_step_counts(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ladder, "run_rung", lambda rung, steps, *rest: calls.append(
        (rung, steps)) or 0)
    assert ladder.main(["--all", "--out", str(tmp_path)]) == 0
    assert calls == [("C", [1000, 4000, 16000]), ("N", [1000, 4000, 16000]),
                     ("O", [1000, 4000]), ("H2O", [1000, 4000]), ("CH4", [1000, 4000]),
                     ("N2", [1000, 4000])]
    calls.clear()
    assert ladder.main(["CO", "N", "--steps", "50", "--out", str(tmp_path)]) == 0
    assert calls == [("CO", [50]), ("N", [50])]
    calls.clear()
    assert ladder.main(["CO", "--out", str(tmp_path)]) == 0
    assert calls == [("CO", [1000, 4000])]


def test_he_ladder_end_to_end(tmp_path, capsys):
    """He, tiny preset, 6 and 12 steps, one checkpoint kept: the 6-step figure comes from the
    12-step run's checkpoint and equals a plain 6-step run's evaluation bit for bit."""
    out, readme = tmp_path / "ladder", tmp_path / "README.md"
    readme.write_text("<!-- ladder:begin -->\n<!-- ladder:end -->\n")
    argv = ["He", "--steps", "6", "12", "--preset", "tiny", "--set", "run.keep_checkpoints=1",
            "--out", str(out), "--readme", str(readme), "--write-readme"]
    assert ladder.main(argv) == 0
    records = ladder.read_results(out / "results.jsonl")
    assert [(r["steps"], r["trained_to"]) for r in records] == [(6, 12), (12, 12)]
    base = out / "He" / ladder.settings_tag("tiny", ["run.keep_checkpoints=1"])
    assert [p.name for p in ckpt_list(base / "train")] == ["ckpt_000006.h5", "ckpt_000012.h5"]
    assert [p.name for p in ckpt_list(base / "at_6")] == ["ckpt_000006.h5"]
    for r in records:
        assert r["reference_ha"] == HE["energy"] and r["hf_limit_ha"] == HE["hf_limit"]
        assert r["deviation_mha"] == pytest.approx(1000 * (r["energy_ha"] - HE["energy"]))
        assert r["corr_pct"] == pytest.approx(100 * (HE["hf_limit"] - r["energy_ha"])
                                              / (HE["hf_limit"] - HE["energy"]))
        assert r["n_params"] == 540 and r["eval_steps"] == 20 and r["n_electrons"] == 2
        assert r["wall_s"] == pytest.approx(r["pretrain_s"] + r["train_s"] + r["eval_s"])
        assert r["train_s"] > 0 and r["eval_s"] > 0
    table = readme.read_text()
    assert "| He | 2 | 6 (of 12) | " in table and "| He | 2 | 12 | " in table
    # a plain 6-step run evaluates to the same energy
    plain = tmp_path / "plain"
    assert vmc_main(["run", str(ROOT / "systems" / "He.yaml"), "--preset", "tiny",
                     "--set", "optim.steps=6", "--out", str(plain)]) == 0
    energy = json.loads((plain / "summary.json").read_text())["energy_ha"]
    assert records[0]["energy_ha"] == energy
    # rerun: nothing is repeated
    capsys.readouterr()
    assert ladder.main(argv) == 0
    assert "He: [6, 12] steps: all in" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    # other settings that resolve to the same config: the records are carried over, untrained
    same = argv + ["--set", "optim.lr_decay_steps=1000.0"]   # the default value
    assert ladder.main(same) == 0
    assert "He at 6 steps: carried over from" in capsys.readouterr().out
    assert (out / "He" / ladder.settings_tag("tiny", ["run.keep_checkpoints=1"])).is_dir()
    assert not (out / "He" / ladder.settings_tag(
        "tiny", ["run.keep_checkpoints=1", "optim.lr_decay_steps=1000.0"])).exists()
    got = ladder.read_results(out / "results.jsonl")
    assert len(got) == 4
    assert [r["energy_ha"] for r in got[2:]] == [r["energy_ha"] for r in records]
    assert got[2]["same_config_as"] == records[0]["settings"]
    assert "6 (of 12) ‡" in ladder.table(got, {}, got[2]["settings"])


def test_config_digest_ignores_only_the_step_counts_and_the_reference():
    cfg = {"optim": {"steps": 4000, "damping": 0.1}, "run": {"keep_steps": [1000], "seed": 0},
           "molecule": {"atoms": [], "reference": {"energy": -1.0}}}
    d = ladder.config_digest(cfg)
    assert ladder.config_digest({"optim": {"steps": 16000, "damping": 0.1},
                                 "run": {"keep_steps": [], "seed": 0},
                                 "molecule": {"atoms": []}}) == d
    assert ladder.config_digest({**cfg, "optim": {"steps": 4000, "damping": 1e-3}}) != d
    assert ladder.config_digest({**cfg, "run": {"keep_steps": [1000], "seed": 1}}) != d


def test_run_digest_counts_a_setting_added_since_with_its_default(tmp_path):
    """A run folder written before a setting existed (its config.yaml lacks the key) has the
    digest of the config resolved today, where the setting takes its default; a value other
    than the default is another config."""
    import yaml
    from vmc.config import load_config, to_dict
    data = to_dict(load_config(ladder.config_file("C"), overrides=("optim.steps=4000",)))
    assert data["ansatz"].pop("cusp_form") == "pade"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert ladder.run_digest(tmp_path) == ladder.expected_digest("C", 4000, None, [])
    data["ansatz"]["cusp_form"] = "tanh"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert ladder.run_digest(tmp_path) != ladder.expected_digest("C", 4000, None, [])


def test_damping_rule_makes_separate_runs_for_short_and_long_counts():
    """C's resolved config at 4000 steps (λ = 0.1) differs from the one at 16000 (1e-3): the
    ladder trains them apart; 1000 and 4000 share one run."""
    d = {s: ladder.expected_digest("C", s, None, []) for s in (1000, 4000, 7999, 8000, 16000)}
    assert d[1000] == d[4000] == d[7999] != d[8000] == d[16000]


def test_carry_over_picks_the_same_config_only():
    recs = [_record(steps=4000, settings={"preset": None, "set": ["x=1"], "defaults": 4},
                    config_digest="aaa", energy_ha=-1.0),
            _record(steps=4000, settings={"preset": None, "set": ["x=2"], "defaults": 4},
                    config_digest="bbb", energy_ha=-2.0)]
    got = ladder.carry_over(recs, "C", 4000, "aaa", ladder.DEFAULTS)
    assert got["energy_ha"] == -1.0 and got["settings"] == ladder.DEFAULTS
    assert got["same_config_as"] == recs[0]["settings"]
    assert ladder.carry_over(recs, "C", 1000, "aaa", ladder.DEFAULTS) is None
    assert ladder.carry_over(recs, "C", 4000, "ccc", ladder.DEFAULTS) is None
    assert ladder.carry_over(recs, "N", 4000, "bbb", ladder.DEFAULTS) is None


def ckpt_list(run_dir):
    from vmc import checkpoint as ckpt
    return ckpt.list_checkpoints(run_dir / "checkpoints")
