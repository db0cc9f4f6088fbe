"""Plots that diagnose (|E − E_ref| on a log axis, the evaluation trace and reblocking curve,
pretraining loss, the sampler's configured target, integer ticks, --plots-dir) and the CSV
export that pandas reads."""

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from vmc import plots, plots_eval
from vmc.analysis import CHEMICAL_ACCURACY_HA, load_run, summarize
from vmc.analyze import main
from vmc.export import EVAL_COLUMNS, TRAIN_COLUMNS

from test_analyze_cli import BURN, H2_REF, N_EVAL, make_run


def test_train_csv_loads_with_pandas_one_row_per_step(tmp_path, capsys):
    d = make_run(tmp_path / "r")
    assert main([str(d), "--export", "csv", "--no-plots"]) == 0
    df = pd.read_csv(d / "train.csv", float_precision="round_trip")
    with h5py.File(d / "train.h5") as f:
        stats = {k: f["stats"][k][()] for k in f["stats"]}
    assert len(df) == stats["step"].size == 1000
    assert list(df.columns) == [c for c in TRAIN_COLUMNS if c in stats]   # documented order
    np.testing.assert_array_equal(df["step"].to_numpy(), np.arange(1000))
    np.testing.assert_array_equal(df["energy"].to_numpy(), stats["energy"])   # exact repr
    ev = pd.read_csv(d / "eval.csv", float_precision="round_trip")
    assert list(ev.columns) == list(EVAL_COLUMNS) and len(ev) == 2 * N_EVAL
    last = ev[ev["group"] == "eval_001"]
    with h5py.File(d / "eval.h5") as f:
        want = f["eval_001/energy"][()][BURN:]   # burn-in left out, as in the summary
    np.testing.assert_array_equal(last["energy"].to_numpy(), want)
    assert (last["checkpoint_step"] == 1000).all()
    assert "wrote" in capsys.readouterr().err


def test_eval_csv_carries_s2_and_dipole_where_a_group_sampled_them(tmp_path):
    """Observable columns follow EVAL_COLUMNS when any group has them: each step's walker
    means (burn-in left out, as the energy), empty in a group without them."""
    d = make_run(tmp_path / "r")
    with h5py.File(d / "eval.h5", "a") as f:
        n = f["eval_001/energy"].shape[0]
        dip = np.random.default_rng(0).normal(size=(n, 3))
        f["eval_001"].create_dataset("dipole", data=dip)
        f["eval_001"].create_dataset("s2", data=np.linspace(0.0, 0.1, n))
    assert main([str(d), "--export", "csv", "--no-plots"]) == 0
    ev = pd.read_csv(d / "eval.csv", float_precision="round_trip")
    assert list(ev.columns) == list(EVAL_COLUMNS) + ["s2", "dipole_x", "dipole_y", "dipole_z"]
    last, first = ev[ev["group"] == "eval_001"], ev[ev["group"] == "eval_000"]
    np.testing.assert_array_equal(last["dipole_y"].to_numpy(), dip[BURN:, 1])
    np.testing.assert_array_equal(last["s2"].to_numpy(), np.linspace(0.0, 0.1, n)[BURN:])
    assert first[["s2", "dipole_x"]].isna().all().all()


def test_error_panel_is_log_with_chemical_accuracy(tmp_path):
    run = load_run(make_run(tmp_path / "r"))
    fig = plots.plot_training(run, summarize(run))
    err = fig.axes[1]
    assert err.get_yscale() == "log" and "(mHa)" in err.get_ylabel()
    flat = [ln.get_ydata()[0] for ln in err.get_lines() if np.ptp(ln.get_ydata()) == 0]
    assert any(np.isclose(y, 1e3 * CHEMICAL_ACCURACY_HA) for y in flat)
    # no reference: one panel only
    d = make_run(tmp_path / "noref", ref=None)
    assert len(plots.plot_training(load_run(d)).axes) == 1


def test_evaluation_plot_shows_blocks_and_reblocking_curve(tmp_path):
    run = load_run(make_run(tmp_path / "r"))
    s = summarize(run)
    fig = plots_eval.plot_evaluation(run, s)
    top, curve = fig.axes
    assert eval_001_in(top.get_title()) and top.get_ylabel() == "energy (Ha)"
    assert curve.get_xscale() == "log" and "plateau found" in curve.get_title()
    # the chosen block size is marked at the reported error bar (mHa)
    star = [ln for ln in curve.get_lines() if ln.get_marker() == "*"][0]
    assert star.get_xdata()[0] == s.block_size
    assert star.get_ydata()[0] == pytest.approx(1e3 * s.stderr)


def eval_001_in(title):
    return "eval_001" in title and f"({N_EVAL} steps)" in title


def test_sampler_target_from_config_and_integer_ticks(tmp_path):
    d = make_run(tmp_path / "r")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["sampler"] = {"target_pmove": 0.3}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    with h5py.File(d / "train.h5", "a") as f:   # a 5-step run: no half-step ticks
        for k in list(f["stats"]):
            v = f["stats"][k][:5]
            del f["stats"][k]
            f["stats"][k] = v
    run = load_run(d)
    a1 = plots.plot_sampler(run).axes[0]
    flat = [ln.get_ydata()[0] for ln in a1.get_lines() if np.ptp(ln.get_ydata()) == 0]
    assert 0.3 in flat and 0.5 not in flat
    fig = plots.plot_training(run)
    fig.canvas.draw()
    ticks = fig.axes[-1].get_xticks()
    assert np.allclose(ticks, np.round(ticks))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert not any("running mean" in t for t in labels)   # a 1-step "running mean" is noise


def test_plots_dir_and_pretrain_png(tmp_path, capsys):
    d = make_run(tmp_path / "r")
    with h5py.File(d / "train.h5", "a") as f:
        f["pretrain/step"] = np.arange(50)
        f["pretrain/loss"] = np.exp(-np.arange(50) / 10.0)
    out = tmp_path / "pngs"
    assert main([str(d), "--plots-dir", str(out)]) == 0
    names = sorted(p.name for p in (out / "r").iterdir())
    assert names == ["evaluation.png", "pretrain.png", "sampler.png", "training.png",
                     "variance.png"]
    assert not list(d.glob("*.png"))
    ax = plots_eval.plot_pretrain(load_run(d)).axes[0]
    assert ax.get_yscale() == "log"
