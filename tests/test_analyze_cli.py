"""`vmc analyze` on synthetic run directories with known statistics."""

import csv
import io
import json
import pathlib

import h5py
import numpy as np
import pytest
import yaml

from vmc import plots
from vmc.analysis import load_run, reblock, summarize
from vmc.analyze import format_value_error, geometry_parameters, main

E_TRUE = -1.1738        # mean local energy of the synthetic evaluation, Ha
PHI, SIG_EPS = 0.5, 2e-3  # AR(1) noise of the per-step energies
N_EVAL, BURN = 4096, 64
H2_REF, H2_HF = -1.1744757142, -1.133629573


def ar1(phi, n, sigma, rng):
    eps = rng.normal(0.0, sigma, n)
    x = np.empty(n)
    x[0] = eps[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + eps[t]
    return x


def make_run(path: pathlib.Path, *, bond=1.4, ref=H2_REF, kind="exact", hf=H2_HF, seed=0,
             name="H2", evals=True, units="bohr") -> pathlib.Path:
    """A run directory as `vmc run` writes it: config.yaml, train.h5, eval.h5."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    molecule = {"atoms": [{"symbol": "H", "position": [0.0, 0.0, 0.0]},
                          {"symbol": "H", "position": [0.0, 0.0, bond]}],
                "charge": 0, "spin": 0, "units": units}
    if ref is not None:
        molecule["reference"] = {"energy": ref, "source": "test", "kind": kind, "hf_limit": hf}
    (path / "config.yaml").write_text(yaml.safe_dump({"name": name, "molecule": molecule}))
    n = 1000
    step = np.arange(n, dtype=np.int64)
    energy = E_TRUE + 0.8 * np.exp(-step / 60.0) + ar1(0.7, n, 3e-3, rng)
    stats = {"step": step, "energy": energy, "variance": 0.02 + 2.0 * np.exp(-step / 80.0),
             "median": energy, "clip_fraction": np.full(n, 0.01),
             "pmove": 0.5 + 0.02 * rng.standard_normal(n), "width": 0.2 + 0.01 * np.sin(step),
             "lr": 0.05 / (1 + step / 1e3), "update_norm": np.ones(n),
             "constraint_scale": np.ones(n), "step_time": np.full(n, 0.01)}
    with h5py.File(path / "train.h5", "w") as f:
        for k, v in stats.items():
            f.create_dataset(f"stats/{k}", data=v)
    if evals:
        with h5py.File(path / "eval.h5", "w") as f:
            # eval_000 stores only measured steps; eval_001 also stores its burn-in (far off).
            for i, (extra, ckpt) in enumerate([(0, 500), (BURN, 1000)]):
                e = E_TRUE + ar1(PHI, N_EVAL, SIG_EPS, rng)
                e = np.r_[np.full(extra, E_TRUE + 1.0), e]
                g = f.create_group(f"eval_{i:03d}")
                g.create_dataset("energy", data=e)
                g.create_dataset("variance", data=np.full(e.size, 0.03))
                g.create_dataset("pmove", data=np.full(e.size, 0.52))
                g.attrs.update(seed=i, walkers=256, steps=N_EVAL, burn_in=BURN,
                               checkpoint_step=ckpt)
    return path


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "h2")


def eval_energy(path, group):
    with h5py.File(path / "eval.h5", "r") as f:
        return f[group]["energy"][()][-N_EVAL:]


def test_json_values(run_dir, capsys):
    assert main([str(run_dir), "--json", "--no-plots"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    e = eval_energy(run_dir, "eval_001")  # the last evaluation, burn-in dropped
    r = reblock(e)
    assert obj["estimator"] == "eval" and obj["n_samples"] == N_EVAL
    assert obj["energy_ha"] == pytest.approx(np.mean(e), abs=1e-12)
    assert obj["energy_stderr_ha"] == pytest.approx(r.stderr, rel=1e-12)
    # AR(1): sigma_mean = sigma_eps / ((1 - phi) sqrt(n)); tau = (1 + phi)/(1 - phi) = 3.
    assert obj["energy_stderr_ha"] == pytest.approx(SIG_EPS / ((1 - PHI) * np.sqrt(N_EVAL)), rel=0.25)
    assert obj["tau"] == pytest.approx(3.0, rel=0.4)
    assert abs(obj["energy_ha"] - E_TRUE) < 4 * obj["energy_stderr_ha"]
    assert obj["variance_ha2"] == pytest.approx(0.03)
    assert obj["reference_ha"] == H2_REF and obj["reference_kind"] == "exact"
    assert obj["deviation_label"] == "error"
    assert obj["deviation_mha"] == pytest.approx(1e3 * (np.mean(e) - H2_REF), rel=1e-9)
    assert obj["within_chemical_accuracy"] is True  # ~0.68 mHa above the exact energy
    assert obj["correlation_pct"] == pytest.approx(
        100 * (H2_HF - np.mean(e)) / (H2_HF - H2_REF), rel=1e-9)
    assert [ev["group"] for ev in obj["evaluations"]] == ["eval_000", "eval_001"]
    assert obj["evaluations"][0]["energy_ha"] == pytest.approx(np.mean(eval_energy(run_dir, "eval_000")))
    assert obj["evaluations"][1]["checkpoint_step"] == 1000
    with h5py.File(run_dir / "train.h5", "r") as f:
        tail = f["stats/energy"][900:]
    assert obj["train_steps"] == 1000
    assert obj["train_energy_ha"] == pytest.approx(np.mean(tail), abs=1e-12)
    assert obj["geometry_bohr"]["bond_length"] == pytest.approx(1.4)


def test_ccsdt_reference_is_a_difference(tmp_path, capsys):
    d = make_run(tmp_path / "co", ref=-1.1760, kind="CCSD(T)/CBS", hf=None, name="X2")
    assert main([str(d), "--json", "--no-plots"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    assert obj["deviation_label"] == "difference to CCSD(T)/CBS"
    assert obj["deviation_mha"] == pytest.approx(1e3 * (obj["energy_ha"] + 1.1760))
    assert obj["within_chemical_accuracy"] is None and obj["correlation_pct"] is None


def test_no_eval_uses_training_tail_and_no_reference(tmp_path):
    d = make_run(tmp_path / "t", evals=False, ref=None)
    s = summarize(d)
    assert s.estimator == "train tail" and s.n_samples == 100
    assert s.energy == s.train_tail_energy
    assert s.energy == pytest.approx(E_TRUE, abs=5e-3)
    assert s.variance == pytest.approx(0.02, abs=1e-4)
    assert s.deviation_mha is None and s.deviation_label is None


def test_a_reference_for_another_hamiltonian_is_not_compared_and_the_table_says_why(
        run_dir, capsys):
    """The same H2 run with ccECP on its atoms has no error against the all-electron
    reference: --json has no reference and the note summary.json has; the table prints it."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert main([str(run_dir), "--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["reference_note"] is None
    cfg["hamiltonian"] = {"ecp": {"H": "ccecp"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main([str(run_dir), "--json", "--no-plots"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    note = ("the reference is all-electron but this run is ccecp (hamiltonian.ecp): no error "
            "against it")
    assert obj["reference_ha"] is None and obj["deviation_mha"] is None
    assert obj["reference_note"] == note
    assert main([str(run_dir), "--no-plots"]) == 0
    assert f"{run_dir}: {note}" in capsys.readouterr().out


def test_csv_and_table(run_dir, capsys):
    assert main([str(run_dir), "--csv", "--no-plots"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["system"] == "H2" and rows[0]["n_evals"] == "2"
    assert main([str(run_dir), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "energy (Ha)" in out and "H2" in out and "error" in out


def test_pngs_and_figure_content(run_dir, capsys):
    assert main([str(run_dir)]) == 0
    for name in ("training.png", "variance.png", "sampler.png"):
        assert (run_dir / name).stat().st_size > 5000
    run = load_run(run_dir)
    fig = plots.plot_training(run, summarize(run))
    ax = fig.axes[0]
    assert fig.axes[-1].get_xlabel() == "step" and ax.get_ylabel() == "energy (Ha)"
    flat = [ln for ln in ax.get_lines() if np.ptp(ln.get_ydata()) == 0]
    assert any(np.allclose(ln.get_ydata(), H2_REF) for ln in flat)
    lo, hi = ax.get_ylim()  # converged part readable: the initial +0.8 Ha spike is cut off
    assert lo < H2_REF < hi and hi - lo < 0.05
    vax = plots.plot_variance(run).axes[0]
    assert vax.get_yscale() == "log" and "(Ha²)" in vax.get_ylabel()
    sax = plots.plot_sampler(run).axes
    assert sax[1].get_ylabel() == "width (bohr)"


def test_curve_over_bond_length(tmp_path, monkeypatch, capsys):
    dirs = [make_run(tmp_path / f"h2_{b}", bond=b, seed=i, units="angstrom")
            for i, b in enumerate((0.7, 0.74, 0.8))]
    monkeypatch.chdir(tmp_path)
    assert main([str(d) for d in dirs] + ["--json"]) == 0
    assert (tmp_path / "curve_bond_length.png").stat().st_size > 5000
    objs = json.loads(capsys.readouterr().out)
    assert objs[1]["geometry_bohr"]["bond_length"] == pytest.approx(0.74 * 1.8897261246)
    out = tmp_path / "c.png"
    assert main([str(d) for d in dirs] + ["--no-plots"]) == 0
    assert not out.exists()
    assert main([str(d) for d in dirs] + ["--curve-param", "molecule.atoms.1.position.2",
                                          "--curve-out", str(out), "--json"]) == 0
    assert out.stat().st_size > 5000
    sums = [summarize(d) for d in dirs]
    ax = plots.plot_curve(sums, [0.7, 0.74, 0.8], "bond length (Å)").axes[0]
    assert ax.get_xlabel() == "bond length (Å)" and ax.get_ylabel() == "energy (Ha)"
    # the legend names the reference kinds the files give
    labels = ax.get_legend_handles_labels()[1]
    assert "reference (exact)" in labels, labels   # make_run's kind
    # an explicit curve path with --no-plots is contradictory: one line, exit 2, nothing written
    capsys.readouterr()
    out2 = tmp_path / "c2.png"
    assert main([str(d) for d in dirs] + ["--no-plots", "--curve-out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --curve-out") and err.count("\n") == 1
    assert not out2.exists()


@pytest.mark.parametrize("setup", ["missing", "no_config", "no_h5", "bad_param", "bad_yaml"])
def test_bad_run_dir_returns_2(tmp_path, capsys, setup):
    d = tmp_path / "r"
    args = [str(d), "--no-plots"]
    if setup == "no_config":
        d.mkdir()
    elif setup == "no_h5":
        d.mkdir()
        (d / "config.yaml").write_text("name: X\n")
    elif setup == "bad_param":
        make_run(d)
        args += ["--curve-param", "nonsense.path"]
    elif setup == "bad_yaml":
        make_run(d)
        (d / "config.yaml").write_text("name: [unclosed\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_one_bad_run_does_not_hide_the_others(tmp_path, capsys):
    good, bad = make_run(tmp_path / "good"), make_run(tmp_path / "bad")
    (bad / "config.yaml").unlink()
    assert main([str(good), str(bad), "--no-plots", "--json"]) == 2
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["run_dir"] for r in rows] == [str(good)]
    assert rows[0]["energy_ha"] == summarize(good).energy
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: ") and "config.yaml" in err[0]


def test_no_curve_for_different_molecules(tmp_path, monkeypatch):
    a = make_run(tmp_path / "a", bond=1.4)
    b = make_run(tmp_path / "b", bond=1.6)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["molecule"]["charge"] = 1
    cfg["molecule"]["spin"] = 1
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    assert main([str(a), str(b), "--json"]) == 0
    assert not list(tmp_path.glob("curve_*.png"))


def test_help_returns_0(capsys):
    assert main(["--help"]) == 0
    assert "--curve-param" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--bogus"], ["--json", "--csv"], ["--export", "xlsx"], []])
def test_bad_arguments_are_one_line_and_exit_2(run_dir, argv, capsys):
    """As every other subcommand: one `error: ...` line, not the whole usage."""
    assert main(([str(run_dir)] if argv else []) + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert err.endswith("(see `vmc analyze --help`)\n"), err


def test_a_plots_dir_that_cannot_be_made_is_refused_before_any_output(run_dir, tmp_path,
                                                                     capsys):
    (tmp_path / "a_file").write_text("")
    assert main([str(run_dir), "--plots-dir", str(tmp_path / "a_file" / "plots")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, (out, err)
    assert err.startswith(f"error: --plots-dir '{tmp_path / 'a_file' / 'plots'}': cannot "
                          f"create it") and err.endswith("or --no-plots\n"), err
    assert not list(run_dir.glob("*.png"))


def test_helpers():
    assert format_value_error(-1.174385, 1.2e-5) == "-1.174385(12)"
    assert format_value_error(-75.0673, 0.0042) == "-75.0673(42)"
    assert geometry_parameters({"molecule": {"atoms": [{"symbol": "He", "position": [0, 0, 0]}]}}) == {}


def test_eval_step_with_no_finite_energy_is_left_out(tmp_path):
    """A step whose every E_L was non-finite (NaN step mean) is skipped, not an error."""
    from vmc.analysis import summarize
    d = tmp_path / "r"
    make_run(d)
    with h5py.File(d / "eval.h5", "a") as f:
        e = np.r_[-1.0 + 0.01 * np.sin(np.arange(99.0)), np.nan]
        f.create_group("eval_002").create_dataset("energy", data=e)
    s = summarize(d)
    assert s.evals[-1].name == "eval_002"
    assert s.energy == pytest.approx(np.mean(e[:99]))
