"""`vmc analyze` on a short real run recomputes what `vmc run` wrote into summary.json."""

import json
import os
import subprocess
import sys

import pytest



def test_analyze_recomputes_summary_from_hdf5(tmp_path):
    cfg = tmp_path / "h2.yaml"
    cfg.write_text("atoms:\n  - {symbol: H, position: [0, 0, -0.7]}\n"
                   "  - {symbol: H, position: [0, 0, 0.7]}\n"
                   "reference: {energy: -1.1744757142, kind: exact, source: Pachucki 2010, "
                   "hf_limit: -1.133629573}\n")
    run = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("VMC_FAULT_INJECT", None)
    proc = subprocess.run([sys.executable, "-m", "vmc.cli", "run", str(cfg), "--out", str(run),
                           "--preset", "tiny", "--set", "optim.steps=200",
                           "--set", "eval.steps=200"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    out = subprocess.run([sys.executable, "-m", "vmc.cli", "analyze", str(run), "--json"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    assert result["energy_ha"] == pytest.approx(summary["energy_ha"], rel=0, abs=1e-12)
    assert result["energy_stderr_ha"] == pytest.approx(summary["energy_stderr_ha"], rel=1e-9)
    assert result["tau"] == pytest.approx(summary["tau"], rel=1e-9)
    assert result["train_energy_ha"] == pytest.approx(summary["train_energy_ha"], abs=1e-12)
    assert result["train_energy_stderr_ha"] == pytest.approx(summary["train_energy_stderr_ha"],
                                                        rel=1e-9)
    assert result["deviation_mha"] == pytest.approx(summary["deviation_mha"], abs=1e-9)
    assert result["deviation_label"] == "error" == summary["deviation_label"]
    # one set of key names: what both hold is named alike (and error_mha is gone)
    shared = ("system", "energy_ha", "energy_stderr_ha", "reference_ha", "reference_kind",
              "deviation_mha", "deviation_label", "group", "block_size", "tau", "plateau",
              "variance_ha2", "train_energy_ha", "train_energy_stderr_ha", "flags",
              "evaluations")
    assert [k for k in shared if k not in result or k not in summary] == []
    assert "error_mha" not in summary and "error_mha" not in result
    assert result["variance_ha2"] == pytest.approx(summary["variance_ha2"], rel=1e-12)
    assert [f["code"] for f in result["flags"]] == [f["code"] for f in summary["flags"]]
    assert result["evaluations"][0]["group"] == summary["evaluations"][0]["group"] == "eval_000"
    for png in ("training.png", "variance.png", "sampler.png"):
        assert (run / png).stat().st_size > 10_000
