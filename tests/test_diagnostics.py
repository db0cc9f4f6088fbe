"""Honest summaries: warnings for a drifting evaluation, a training tail that disagrees with
the evaluation and a missing reblocking plateau, in summary.json, `vmc analyze` (table and
--json); evaluation groups that cannot be used are skipped and named."""

import json
import types

import h5py
import numpy as np
import pytest

from vmc.analysis import summarize
from vmc.analyze import main
from vmc.diagnostics import energy_flags, quarter_drift
from vmc.reblock import reblock

from test_analyze_cli import BURN, E_TRUE, N_EVAL, PHI, SIG_EPS, ar1, make_run


def _replace_eval(path, energy, group="eval_001"):
    with h5py.File(path / "eval.h5", "a") as f:
        del f[group]
        g = f.create_group(group)
        g.create_dataset("energy", data=energy)
        g.attrs.update(seed=1, walkers=256, steps=energy.size, burn_in=0, checkpoint_step=1000)


def _analyze_json(path, capsys):
    assert main([str(path), "--json", "--no-plots"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    return obj


def _codes(obj):
    return [f["code"] for f in obj["flags"]]


def test_clean_run_has_no_flags(tmp_path, capsys):
    obj = _analyze_json(make_run(tmp_path / "ok"), capsys)
    assert obj["flags"] == [] and obj["skipped"] == []


def test_drifting_evaluation_is_flagged(tmp_path, capsys):
    """A 30 mHa ramp over the evaluation (the issue's 6-electron case): first and last
    quarter differ by 22.5 mHa against a combined quarter error below 1 mHa."""
    d = make_run(tmp_path / "drift")
    rng = np.random.default_rng(1)
    e = E_TRUE + np.linspace(0.0, -0.030, N_EVAL) + ar1(PHI, N_EVAL, SIG_EPS, rng)
    _replace_eval(d, e)
    diff, se = quarter_drift(e)
    assert diff == pytest.approx(-0.0225, abs=1e-3) and se < 1e-3
    obj = _analyze_json(d, capsys)
    assert "eval_drift" in _codes(obj)
    flag = next(f for f in obj["flags"] if f["code"] == "eval_drift")
    assert "burn-in" in flag["advice"]
    main([str(d), "--no-plots"])
    assert "WARNING (eval_drift)" in capsys.readouterr().out


def test_train_tail_disagreeing_with_evaluation_is_flagged(tmp_path, capsys):
    """The evaluation 20 mHa above the training tail (σ of the tail ~0.7 mHa)."""
    d = make_run(tmp_path / "disagree")
    rng = np.random.default_rng(2)
    _replace_eval(d, E_TRUE + 0.020 + ar1(PHI, N_EVAL, SIG_EPS, rng))
    obj = _analyze_json(d, capsys)
    assert _codes(obj) == ["train_eval_disagree"]
    assert abs(obj["train_energy_ha"] - E_TRUE) < 5e-3   # the tail is where it was
    assert "train longer" in obj["flags"][0]["advice"]


def test_no_plateau_prints_a_lower_bound(tmp_path, capsys):
    """A random walk of 64 steps has no reblocking plateau."""
    d = make_run(tmp_path / "short")
    rng = np.random.default_rng(3)
    e = E_TRUE + np.cumsum(rng.normal(0, 1e-3, 64))
    _replace_eval(d, e)
    assert reblock(e).plateau is False
    obj = _analyze_json(d, capsys)
    assert "no_plateau" in _codes(obj)
    main([str(d), "--no-plots"])
    out = capsys.readouterr().out
    assert "(>=" in out and "lower bound" in out


def _summary_json(tmp_path, eval_energy, train_energy):
    """summary.json from `write_summary` for synthetic evaluation and training series."""
    from vmc.config import config_from_dict
    from vmc.evaluate import EvalResult
    from vmc.summary import write_summary
    run = tmp_path / "run"
    run.mkdir(parents=True)
    n = train_energy.size
    with h5py.File(run / "train.h5", "w") as f:
        f.create_dataset("stats/step", data=np.arange(n))
        f.create_dataset("stats/energy", data=train_energy)
    cfg = config_from_dict({"atoms": [{"symbol": "H", "position": [0, 0, 0]},
                                      {"symbol": "H", "position": [0, 0, 1.4]}]}, name="H2")
    setup = types.SimpleNamespace(cfg=cfg, molecule=types.SimpleNamespace(n_up=1, n_down=1))
    m = eval_energy.size
    result = EvalResult(eval_energy, np.full(m, 0.03), np.full(m, 0.5), np.zeros((256, 2, 3)),
                        0.2, 1.0, np.zeros(m))
    lines = []
    write_summary(setup, run, {"w": np.zeros(3)}, ("eval_000", result, 1), wall_s=1.0,
                  log=lines.append)
    return json.loads((run / "summary.json").read_text()), lines


def test_summary_json_flags_drift_and_disagreement(tmp_path):
    rng = np.random.default_rng(4)
    train = E_TRUE + ar1(0.7, 1000, 3e-3, rng)
    drift = E_TRUE + np.linspace(0.0, -0.030, N_EVAL) + ar1(PHI, N_EVAL, SIG_EPS, rng)
    s, lines = _summary_json(tmp_path / "a", drift, train)
    assert "eval_drift" in [f["code"] for f in s["flags"]]
    assert "error_mha" not in s and "deviation_mha" in s
    assert "results in" in lines[0] and str(tmp_path / "a" / "run") in lines[0]
    assert any(line.startswith("warning: the evaluation drifts") for line in lines)
    off = E_TRUE + 0.020 + ar1(PHI, N_EVAL, SIG_EPS, rng)
    s, _ = _summary_json(tmp_path / "b", off, train)
    assert [f["code"] for f in s["flags"]] == ["train_eval_disagree"]
    good = E_TRUE + ar1(PHI, N_EVAL, SIG_EPS, rng)
    s, lines = _summary_json(tmp_path / "c", good, train)
    assert s["flags"] == [] and len(lines) == 1


def test_first_eval_group_with_nans_is_skipped_and_named(tmp_path, capsys):
    """eval_000 all NaN (a broken evaluation), eval_001 good: eval_001 is summarised."""
    d = make_run(tmp_path / "nan")
    with h5py.File(d / "eval.h5", "a") as f:
        e = f["eval_000/energy"][()]
        del f["eval_000/energy"]
        f["eval_000"].create_dataset("energy", data=np.full(e.size, np.nan))
        f.create_group("eval_002").create_dataset("variance", data=np.ones(3))  # no energy
    obj = _analyze_json(d, capsys)
    assert obj["group"] == "eval_001" and [e["group"] for e in obj["evaluations"]] == ["eval_001"]
    assert len(obj["skipped"]) == 2, obj["skipped"]
    assert {x.split(":")[0] for x in obj["skipped"]} == {"eval_000", "eval_002"}
    assert any(x.startswith("eval_000: 0 finite") for x in obj["skipped"])
    with h5py.File(d / "eval.h5") as f:
        good = f["eval_001/energy"][()][BURN:]
    assert obj["energy_ha"] == pytest.approx(np.mean(good), abs=1e-12)
    main([str(d), "--no-plots"])
    out = capsys.readouterr().out
    assert "left out: eval_000" in out and "left out: eval_002" in out


def test_one_electron_atoms_get_their_exact_reference():
    from vmc.config import config_from_dict
    he = config_from_dict({"atoms": [{"symbol": "He", "position": [0, 0, 0]}],
                           "charge": 1, "spin": 1})
    assert he.molecule.reference.energy == -2.0 and he.molecule.reference.kind == "exact"
    h = config_from_dict({"atoms": [{"symbol": "H", "position": [0, 0, 0]}], "spin": 1})
    assert h.molecule.reference.energy == -0.5
    h2p = config_from_dict({"atoms": [{"symbol": "H", "position": [0, 0, 0]},
                                      {"symbol": "H", "position": [0, 0, 2]}],
                            "charge": 1, "spin": 1})
    assert h2p.molecule.reference.energy is None   # not trivially exact: left to the user


def test_energy_flags_unit():
    rng = np.random.default_rng(5)
    x = ar1(0.5, 2000, 1e-3, rng)
    assert energy_flags(x, reblock(x), None) == []
    assert energy_flags(None, reblock(x), x + 1.0) == []   # no evaluation: no compare
    assert [f.code for f in energy_flags(x, reblock(x), x + 1.0)] == ["train_eval_disagree"]


def test_training_tail_below_the_evaluation_is_told_from_one_above():
    """A tail above the evaluation: the energy was still falling; below it: the training
    energies are biased low (what N's runs show), so the advice differs."""
    rng = np.random.default_rng(6)
    x = ar1(0.5, 2000, 1e-3, rng)
    (above,) = energy_flags(x, reblock(x), x + 0.03)
    (below,) = energy_flags(x, reblock(x), x - 0.03)
    assert "still moving" in above.advice and "biased low" not in above.advice
    assert "biased low" in below.advice and "still moving" not in below.advice


# ---------------------------------------------------------------- training detectors

def _training_series(n=4000, seed=0):
    """A converging training run: energy relaxing onto −14.6 Ha with AR(1) noise (τ ≈ 5
    steps, σ ≈ 3 mHa per step), variance ~0.2 Ha² with ±30 % scatter."""
    from vmc.diagnostics import training_flags  # noqa: F401  (import check)
    rng = np.random.default_rng(seed)
    noise = np.zeros(n)
    for i in range(1, n):
        noise[i] = 0.8 * noise[i - 1] + 0.6 * 3e-3 * rng.normal()
    steps = np.arange(n)
    energy = -14.6 + 0.5 * np.exp(-steps / 300) + noise
    variance = 0.2 * (1 + 0.3 * rng.random(n)) + 2.0 * np.exp(-steps / 200)
    return {"step": steps, "energy": energy, "variance": variance,
            "rejected": np.zeros(n)}


def test_training_detectors_stay_quiet_on_a_clean_converging_run():
    from vmc.diagnostics import training_flags
    for seed in range(3):
        assert training_flags(_training_series(seed=seed)) == []


def test_training_detectors_trip_on_a_variance_spike_and_an_uphill_stretch():
    from vmc.diagnostics import energy_rise, training_flags, variance_spikes
    s = _training_series()
    s["variance"][1200] = 15.0                         # one step at ~60x the running median
    s["variance"][300] = 50.0                          # before step 500: not counted
    hits, ratios = variance_spikes(s["variance"], s["step"])
    assert list(hits) == [1200] and ratios[0] > 40
    assert [f.code for f in training_flags(s)] == ["variance_spike"]
    s["energy"][2000:2300] += 0.02                     # 20 mHa uphill for 300 steps
    rise = energy_rise(s["energy"], s["step"])
    assert rise is not None and 2090 <= rise[0] <= 2300 and 0.012 < rise[1] < 0.028
    assert [f.code for f in training_flags(s)] == ["variance_spike", "energy_rise"]
    # a rejected step's row (running count goes up) is skipped, its spike with it
    s2 = _training_series()
    s2["variance"][1200] = 15.0
    s2["rejected"][1200:] = 1
    assert training_flags(s2) == []


def test_variance_spike_needs_the_floor_too():
    """He-like: median 5e-4 Ha², single-walker outliers at 0.03 Ha² (60x) are harmless."""
    from vmc.diagnostics import variance_spikes
    rng = np.random.default_rng(1)
    v = 5e-4 * (1 + 0.3 * rng.random(2000))
    v[[700, 900, 1500]] = 0.03
    assert variance_spikes(v)[0].size == 0
    v[1500] = 0.5                                      # above the floor: counted
    assert list(variance_spikes(v)[0]) == [1500]


def test_spikes_that_last_one_step_are_told_from_sustained_ones():
    """One walker far out (a brief spike) against a spoiled ψ (the variance stays up)."""
    from vmc.diagnostics import isolated_spikes, training_flags, variance_spikes
    s = _training_series()
    s["variance"][[1200, 1600]] = 15.0                 # two one-step outliers
    hits, _ = variance_spikes(s["variance"], s["step"])
    assert list(isolated_spikes(s["variance"], s["step"], hits)) == [True, True]
    flag, = training_flags(s)
    assert "2 back under" in flag.message and "within 3 steps" in flag.advice
    s["variance"][1601:1610] = 12.0                    # the second one stays up
    hits, _ = variance_spikes(s["variance"], s["step"])
    assert list(isolated_spikes(s["variance"], s["step"], hits))[:2] == [True, False]
    flag, = training_flags(s)
    assert "lower optim.lr" in flag.advice
