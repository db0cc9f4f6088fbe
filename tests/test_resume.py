"""Checkpoints, exact restarts, signals and the NaN policy, end to end through `vmc run`."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from helpers import cut_back_copy
from vmc import checkpoint as ckpt
from vmc import h5io

H2 = """atoms:
  - {symbol: H, position: [0.0, 0.0, -0.7]}
  - {symbol: H, position: [0.0, 0.0, 0.7]}
reference: {energy: -1.1744757142, kind: exact, source: Pachucki 2010}
"""


def _vmc(args, env=None, check=True, **kw):
    e = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    if not (env and "VMC_FAULT_INJECT" in env):
        e.pop("VMC_FAULT_INJECT", None)
    proc = subprocess.run([sys.executable, "-m", "vmc.cli", *args], env=e, capture_output=True,
                          text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"vmc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def h2_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "h2.yaml"
    p.write_text(H2)
    return p


def _common(solver, steps, every=4, eval_steps=0):
    return ["--preset", "tiny", "--set", "run.x64=true", "--set", f"optim.solver={solver}",
            "--set", f"optim.steps={steps}", "--set", f"run.checkpoint_every={every}",
            "--set", f"eval.steps={eval_steps}", "--set", "sampler.burn_in=0"]


def _run_in_process(h2_file, out, args):
    """`vmc run` in this process (float64 switched on only for the call)."""
    import jax
    from vmc.cli import main
    before = jax.config.jax_enable_x64
    try:
        with jax.enable_x64(True):
            assert main(["run", str(h2_file), "--out", str(out), *args]) == 0
    finally:
        jax.config.update("jax_enable_x64", before)


def _final_state(run_dir, step):
    path = ckpt.checkpoint_path(pathlib.Path(run_dir) / "checkpoints", step)
    return {name: ckpt.read_tree_raw(path, name) for name in ("params", "opt_state", "mcmc")}


# Every solver's state kind once: kfac-cg keeps kfac's KfacState (same init, same
# checkpointed leaves; its Nyström sketch is rebuilt every update from a key folded with the
# update count), so it is left out here (~12 s of the suite); dense keeps sample's ().
SOLVERS = ["adam", "sample"] + [s for s in ("cg", "kfac", "spring", "nystrom-cg")
                                if s in __import__("vmc.optim", fromlist=["REGISTRY"]).REGISTRY]


@pytest.mark.parametrize("solver", SOLVERS)
def test_resume_is_bit_identical(h2_file, tmp_path, solver):
    """2N steps straight == the same run cut back to its checkpoint at step N (as a crash
    leaves it: train.h5 holds rows past the checkpoint), then --resume in a fresh process
    for N more (float64). The proposal width adapts at every step, so the restart crosses
    width adaptation."""
    n = 4
    straight = tmp_path / "straight"
    _run_in_process(h2_file, straight, _common(solver, 2 * n, every=n))
    split = cut_back_copy(straight, tmp_path / "split", n)
    proc = _vmc(["run", str(h2_file), "--out", str(split), "--resume",
                 *_common(solver, 2 * n, every=n)])
    assert f"(step {n})" in proc.stdout
    a, b = _final_state(straight, 2 * n), _final_state(split, 2 * n)
    for tree in a:
        assert a[tree].keys() == b[tree].keys()
        for k in a[tree]:
            np.testing.assert_array_equal(a[tree][k], b[tree][k], err_msg=f"{tree}/{k}")
    sa, sb = h5io.read_stats(straight / "train.h5"), h5io.read_stats(split / "train.h5")
    np.testing.assert_array_equal(sa["step"], np.arange(2 * n))
    np.testing.assert_array_equal(sb["step"], np.arange(2 * n))
    for col in ("energy", "variance", "pmove", "width", "update_norm"):
        np.testing.assert_array_equal(sa[col], sb[col], err_msg=col)
    assert np.ptp(sa["width"]) > 0   # the width really adapted across the restart


def test_sigterm_checkpoints_and_resumes(h2_file, tmp_path):
    run = tmp_path / "run"
    e = {**os.environ, "JAX_PLATFORMS": "cpu"}
    e.pop("VMC_FAULT_INJECT", None)
    proc = subprocess.Popen([sys.executable, "-m", "vmc.cli", "run", str(h2_file), "--out",
                             str(run), *_common("sample", 100000, every=100000),
                             "--set", "run.log_every=1"],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith("step") and int(line.split()[1]) >= 3:
            break
        assert time.time() < deadline, "no training steps within 120 s"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    steps = [int(p.stem.split("_")[1]) for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert len(steps) == 1 and steps[0] >= 3
    stopped = steps[0]
    rows = h5io.read_stats(run / "train.h5")["step"]
    assert rows[-1] == stopped - 1
    res = _vmc(["run", str(h2_file), "--out", str(run), "--resume",
                *_common("sample", stopped + 3, every=100000)])
    assert f"(step {stopped})" in res.stdout
    np.testing.assert_array_equal(h5io.read_stats(run / "train.h5")["step"],
                                  np.arange(stopped + 3))


def test_signal_is_not_swallowed_by_a_broad_except():
    """A SIGTERM that lands inside library code guarded by `except Exception` (JAX's
    persistent-cache read does that, then compiles again) still stops the run: the signal
    raises `Interrupted`, which is not an Exception. (As an Exception it was swallowed, and
    pretraining ran on, ignoring the signal.)"""
    from vmc.run import Interrupted, _RaiseOnSignal
    swallowed = []
    with pytest.raises(Interrupted) as info:
        with _RaiseOnSignal():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Exception as err:  # noqa: BLE001 - the library code's guard
                swallowed.append(err)
    assert info.value.signum == signal.SIGTERM and not swallowed


@pytest.mark.parametrize("phase", ["pretraining", "evaluation"])
def test_signal_outside_training_exits_75_and_resume_finishes(h2_file, tmp_path, phase):
    """SIGTERM during pretraining (no checkpoint yet) or evaluation (final checkpoint written):
    exit 75 with a message naming the phase; `--resume` then finishes the run."""
    run = tmp_path / "run"
    e = {**os.environ, "JAX_PLATFORMS": "cpu"}
    e.pop("VMC_FAULT_INJECT", None)
    long = (["--set", "pretrain.steps=1000000"] if phase == "pretraining"
            else ["--set", "eval.steps=1000000"])
    proc = subprocess.Popen([sys.executable, "-m", "vmc.cli", "run", str(h2_file), "--out",
                             str(run), *_common("sample", 4), "--set", "run.log_every=1", *long],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = "pretrain:" if phase == "pretraining" else "step      4"
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith(marker):
            break
        assert time.time() < deadline, f"no {marker!r} line within 120 s"
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert f"stopped by SIGTERM during {phase}" in out
    assert not (run / "summary.json").exists()
    has_ckpt = bool(ckpt.list_checkpoints(run / "checkpoints"))
    assert has_ckpt == (phase == "evaluation")
    res = _vmc(["run", str(h2_file), "--out", str(run), "--resume", *_common("sample", 4),
                "--set", "eval.steps=16"])
    assert ("starting from the beginning" in res.stdout) == (phase == "pretraining")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_steps"] == 16 and np.isfinite(summary["energy_ha"])


def test_resume_refuses_changed_settings(h2_file, tmp_path):
    """A resumed run must be the same run: changing the solver, seed or molecule is refused
    with exit 2 and nothing is written; optim.steps may grow but not fall below the checkpoint."""
    run = tmp_path / "run"
    _vmc(["run", str(h2_file), "--out", str(run), *_common("sample", 4)])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    lih = tmp_path / "lih.yaml"
    lih.write_text(H2.replace("symbol: H, position: [0.0, 0.0, -0.7]",
                              "symbol: Li, position: [0.0, 0.0, -0.7]"))
    cases = [(h2_file, ["--set", "optim.solver=cg"], "optim.solver: 'sample' there, 'cg' now"),
             (h2_file, ["--set", "run.seed=7"], "run.seed: 0 there, 7 now"),
             (lih, [], "molecule.atoms"),
             (h2_file, ["--set", "optim.steps=3"], "below the checkpoint's step 4")]
    for config, extra, words in cases:
        steps = [] if "optim.steps=3" in extra else ["--set", "optim.steps=8"]
        res = _vmc(["run", str(config), "--out", str(run), "--resume", *_common("sample", 4),
                    *steps, *extra], check=False)
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_nan_step_rejected_and_run_continues(h2_file, tmp_path):
    run = tmp_path / "run"
    _vmc(["run", str(h2_file), "--out", str(run), *_common("sample", 8, eval_steps=16)],
         env={"VMC_FAULT_INJECT": "nan_energy@2,5"})
    stats = h5io.read_stats(run / "train.h5")
    assert np.isnan(stats["energy"][2]) and np.isnan(stats["energy"][5])
    assert stats["rejected"][-1] == 2 and stats["rejected"][1] == 0
    assert np.isfinite(np.delete(stats["energy"], [2, 5])).all()
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["energy_ha"])


def test_nan_every_step_stops_without_nan_checkpoint(h2_file, tmp_path):
    run = tmp_path / "run"
    proc = _vmc(["run", str(h2_file), "--out", str(run), *_common("sample", 40),
                 "--set", "run.max_bad_steps=3"],
                env={"VMC_FAULT_INJECT": "nan_energy@all"}, check=False)
    assert proc.returncode == 3
    assert "diverged" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    arrays = []
    for path in ckpt.list_checkpoints(run / "checkpoints"):
        with h5py.File(path) as f:
            f.visititems(lambda name, d: arrays.append((name, d[()]))
                         if isinstance(d, h5py.Dataset) else None)
    for name, a in arrays:
        assert a.dtype.kind != "f" or np.isfinite(a).all(), name
    assert not (run / "summary.json").exists()


def test_checkpoint_write_aborted_halfway_then_resume(h2_file, tmp_path):
    run = tmp_path / "run"
    _run_in_process(h2_file, run, _common("sample", 4))
    proc = _vmc(["run", str(h2_file), "--out", str(run), "--resume", *_common("sample", 8)],
                env={"VMC_FAULT_INJECT": "checkpoint_abort"}, check=False)
    assert proc.returncode == 17
    assert list((run / "checkpoints").glob(".*.tmp")), "the aborted write left its temp file"
    res = _vmc(["run", str(h2_file), "--out", str(run), "--resume", *_common("sample", 8)])
    assert "(step 4)" in res.stdout
    assert not list((run / "checkpoints").glob(".*.tmp"))
    np.testing.assert_array_equal(h5io.read_stats(run / "train.h5")["step"], np.arange(8))
    # a corrupted newest checkpoint is skipped with a warning naming it
    newest = ckpt.checkpoint_path(run / "checkpoints", 8)
    raw = bytearray(newest.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)
    newest.write_bytes(bytes(raw))
    ev = _vmc(["eval", str(run), "--steps", "16"])
    assert "(step 4)" in ev.stdout
    line = next(x for x in ev.stdout.splitlines() if "skipping invalid checkpoint" in x)
    assert line.startswith("warning: ") and "ckpt_000008" in line   # one line, logged
    assert line in (run / "run.log").read_text() and "UserWarning" not in ev.stderr


def test_vmc_eval_agrees_with_run_evaluation(h2_file, tmp_path):
    run = tmp_path / "run"
    args = ["--preset", "tiny", "--set", "optim.steps=30", "--set", "eval.steps=300",
            "--set", "sampler.walkers=64"]
    _vmc(["run", str(h2_file), "--out", str(run), *args])
    _vmc(["eval", str(run), "--seed", "1234"])
    s = json.loads((run / "summary.json").read_text())
    e1, e2 = s["evaluations"]
    assert e2["seed"] == 1234 and e1["group"] == "eval_000" and e2["group"] == "eval_001"
    diff = abs(e1["energy_ha"] - e2["energy_ha"])
    assert diff <= 3 * np.hypot(e1["energy_stderr_ha"], e2["energy_stderr_ha"])
    with h5py.File(run / "eval.h5") as f:
        assert set(f) == {"eval_000", "eval_001"}


def test_max_minutes_counts_from_the_process_start(h2_file, tmp_path, monkeypatch, capsys):
    """run.max_minutes is a batch job's limit: with the process started an hour ago
    (vmc.START_TIME) and run.max_minutes 30, the run stops after its first training step
    (exit 75, a checkpoint at step 1), although training itself took seconds; a resume
    with run.max_minutes 600 finishes the run."""
    import jax

    import vmc
    from vmc.cli import main
    monkeypatch.setattr(vmc, "START_TIME", time.time() - 3600)
    out = tmp_path / "run"
    args = ["run", str(h2_file), "--out", str(out), *_common("sample", 6, every=100),
            "--set", "run.max_minutes=30"]
    before = jax.config.jax_enable_x64
    try:
        with jax.enable_x64(True):
            assert main(args) == 75
            said = capsys.readouterr()
            said = said.out + said.err
            assert "stopping after step 1 (run.max_minutes=30.0)" in said, said[-2000:]
            steps = [int(p.stem.split("_")[1])
                     for p in ckpt.list_checkpoints(out / "checkpoints")]
            assert steps == [1]
            assert main(["run", str(h2_file), "--out", str(out), "--resume",
                         *_common("sample", 6, every=100),
                         "--set", "run.max_minutes=600"]) == 0
    finally:
        jax.config.update("jax_enable_x64", before)
    assert list(h5io.read_stats(out / "train.h5")["step"]) == list(range(6))
