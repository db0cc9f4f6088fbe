"""`vmc resume RUN_DIR`: a run continues from its own config.yaml; a finished run is left
alone; no evaluation reuses a seed of eval.h5; run.log holds the console with timestamps."""

import json
import os
import re
import shutil

import h5py
import jax
import numpy as np
import pytest

from vmc import checkpoint as ckpt, h5io
from vmc.cli import main
from vmc.rundir_lock import RunDirBusy, RunDirLock, claim

# one worker runs this module: its module fixtures are built once (pyproject: loadgroup)
pytestmark = pytest.mark.xdist_group("resume_cmd")

H2 = """atoms:
  - {symbol: H, position: [0.0, 0.0, -0.7]}
  - {symbol: H, position: [0.0, 0.0, 0.7]}
reference: {energy: -1.1744757142, kind: exact, source: Pachucki 2010}
"""


def _call(argv):
    before = jax.config.jax_enable_x64
    try:
        with jax.enable_x64(True):
            return main([str(a) for a in argv])
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """8 float64 steps with checkpoints at 4 and 8 (settings outside the preset, so that a
    resume without config.yaml could not know them) and a 16-step evaluation."""
    d = tmp_path_factory.mktemp("resume")
    cfg = d / "h2.yaml"
    cfg.write_text(H2)
    run = d / "run"
    assert _call(["run", cfg, "--out", run, "--preset", "tiny", "--set", "run.x64=true",
                  "--set", "optim.steps=8", "--set", "run.checkpoint_every=4",
                  "--set", "sampler.walkers=16", "--set", "eval.steps=16",
                  "--set", "sampler.burn_in=0"]) == 0
    return run


def _stopped_at_step_4(finished, tmp_path):
    """A copy of the finished run without its step-8 checkpoint and its evaluation: a run
    that looks stopped at step 4."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpt.checkpoint_path(run / "checkpoints", 8).unlink()
    (run / "eval.h5").unlink()
    (run / "summary.json").unlink()
    return run


def test_run_log_holds_the_final_line(finished, capsys):
    log = (finished / "run.log").read_text().splitlines()
    final = [line for line in log if "results in" in line]
    assert final and str(finished) in final[-1] and "energy " in final[-1]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line) for line in log)
    assert any(re.search(r"step +8 / 8 .* Ha", line) for line in log)
    assert any(line.split(" ", 1)[1].startswith("compile: ") for line in log)


def test_resume_with_only_the_directory(finished, tmp_path, capsys):
    """Drop the step-8 checkpoint and the evaluation: the run looks stopped at step 4.
    `vmc resume RUN` trains steps 4..7 again bit for bit and evaluates."""
    want = ckpt.read_tree_raw(ckpt.checkpoint_path(finished / "checkpoints", 8), "params")
    run = _stopped_at_step_4(finished, tmp_path)
    capsys.readouterr()
    assert _call(["resume", run]) == 0
    out = capsys.readouterr().out
    assert "resume: from ckpt_000004.h5 (step 4)" in out and "results in" in out
    np.testing.assert_array_equal(h5io.read_stats(run / "train.h5")["step"], np.arange(8))
    got = ckpt.read_tree_raw(ckpt.checkpoint_path(run / "checkpoints", 8), "params")
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(a, b)
    s = json.loads((run / "summary.json").read_text())
    assert s["walkers"] == 16 and s["eval_steps"] == 16 and np.isfinite(s["energy_ha"])


def test_finished_run_is_left_alone_and_never_reuses_a_seed(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    capsys.readouterr()
    assert _call(["resume", run]) == 0
    out = capsys.readouterr().out
    assert "finished: 8 of 8 steps trained, evaluated (eval_000)" in out
    assert f"vmc resume {run} --steps 16" in out and f"vmc eval {run}" in out
    with h5py.File(run / "eval.h5") as f:
        assert list(f) == ["eval_000"]
        seed0 = int(f["eval_000"].attrs["seed"])
    # `vmc run --resume` of a finished run evaluates again, with a fresh seed
    cfg = tmp_path / "h2.yaml"
    cfg.write_text(H2)
    assert _call(["run", cfg, "--out", run, "--resume", "--preset", "tiny",
                  "--set", "run.x64=true", "--set", "optim.steps=8",
                  "--set", "run.checkpoint_every=4", "--set", "sampler.walkers=16",
                  "--set", "eval.steps=16", "--set", "sampler.burn_in=0"]) == 0
    assert f"seed {seed0} was used by eval_000" in capsys.readouterr().out
    with h5py.File(run / "eval.h5") as f:
        seeds = [int(f[g].attrs["seed"]) for g in f]
        e0, e1 = f["eval_000/energy"][()], f["eval_001/energy"][()]
    assert len(set(seeds)) == 2 and not np.array_equal(e0, e1)
    # an explicit used seed is refused before anything is written
    assert _call(["eval", run, "--seed", seeds[1], "--steps", "16"]) == 2
    assert "--seed: " in capsys.readouterr().err
    # so is one JAX cannot take, or whose successor (the next default seed) it could not
    for bad in (2**63 - 1, -1):
        assert _call(["eval", run, "--seed", bad, "--steps", "16"]) == 2
        assert capsys.readouterr().err == (f"error: --seed: {bad} is out of range; valid: "
                                           f"0 <= seed <= 2147483647\n")
    with h5py.File(run / "eval.h5") as f:
        assert len(f) == 2


def test_resume_of_no_run_directory_is_bad_input(tmp_path, capsys):
    assert _call(["resume", tmp_path / "nothing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run_dir") and err.count("\n") == 1


def test_resume_of_a_finished_run_refuses_what_run_resume_refuses(finished, capsys):
    """`vmc resume` of a finished run checks its arguments before saying there is nothing to
    do: a total below the checkpoint's step and a setting that may not change are bad input
    (exit 2, one line), as with `vmc run --resume`; the run is left as it was."""
    before = sorted(p.relative_to(finished).as_posix() for p in finished.rglob("*"))
    capsys.readouterr()
    assert _call(["resume", finished, "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert err == "error: optim.steps: 5 is below the checkpoint's step 8; valid: >= 8\n", err
    assert _call(["resume", finished, "--set", "ansatz.determinants=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: settings differ") and "ansatz.determinants" in err
    assert err.count("\n") == 1
    assert sorted(p.relative_to(finished).as_posix() for p in finished.rglob("*")) == before


def test_resume_of_a_finished_run_says_an_allowed_set_is_not_applied(finished, capsys):
    """A changed reference on a finished run is allowed but has nothing to apply to: the
    run says so and where it would apply, exit 0, the run left as it was."""
    before = (finished / "summary.json").read_text()
    capsys.readouterr()
    assert _call(["resume", finished, "--set", "molecule.reference.energy=-1.17"]) == 0
    out = capsys.readouterr().out
    assert "note: --set molecule.reference.energy not applied: the run has finished" in out
    assert f"--out {finished} --resume" in out
    assert (finished / "summary.json").read_text() == before


def test_resume_with_more_walkers_evaluates_with_them(finished, tmp_path, capsys):
    """config.yaml stores eval.walkers resolved (16 = sampler.walkers); `vmc resume --set
    sampler.walkers=32` lets it follow, as `vmc run CONFIG --resume` does, and says so."""
    run = _stopped_at_step_4(finished, tmp_path)
    capsys.readouterr()
    assert _call(["resume", run, "--set", "sampler.walkers=32"]) == 0
    out = capsys.readouterr().out
    assert "resume: eval.walkers follows sampler.walkers: 32 (was 16)" in out
    assert "resume: changed settings: " in out and "sampler.walkers: 16 -> 32" in out
    s = json.loads((run / "summary.json").read_text())
    assert s["walkers"] == 32 and np.isfinite(s["energy_ha"])
    with h5py.File(run / "eval.h5") as f:
        assert f["eval_000"].attrs["walkers"] == 32


def test_init_from_another_geometry_and_a_clear_error_for_another_network(finished, tmp_path,
                                                                        capsys):
    """`--init-from` starts a stretched H2 from the finished run's parameters and walkers;
    a network of another size is refused in one line naming the setting that differs."""
    stretched = tmp_path / "h2_stretched.yaml"
    stretched.write_text(H2.replace("0.7]", "0.8]"))
    common = ["--preset", "tiny", "--set", "run.x64=true", "--set", "sampler.walkers=16",
              "--set", "sampler.burn_in=0", "--set", "eval.steps=0", "--set", "optim.steps=2",
              "--init-from", finished]
    capsys.readouterr()
    assert _call(["run", stretched, "--out", tmp_path / "ok", *common]) == 0
    assert f"warm start: parameters and walkers from {finished}" in capsys.readouterr().out
    assert _call(["run", stretched, "--out", tmp_path / "bad", *common,
                  "--set", "ansatz.determinants=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ansatz.determinants: 2 there, 4 here" in err, err
    assert not (tmp_path / "bad").exists()
    # a named checkpoint file (not only the newest) and a run of another precision
    first = ckpt.checkpoint_path(finished / "checkpoints", 4)
    file_args = [a if a != finished else first for a in common]
    assert _call(["run", stretched, "--out", tmp_path / "file", *file_args]) == 0
    assert f"warm start: parameters and walkers from {first}" in capsys.readouterr().out
    assert _call(["run", stretched, "--out", tmp_path / "f32", *common,
                  "--set", "run.x64=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.x64: True there, False here" in err, err
    assert "valid: " in err
    assert _call(["run", stretched, "--out", tmp_path / "none", *common[:-1],
                  tmp_path / "h2_stretched.yaml"]) == 2
    err = capsys.readouterr().err
    assert "valid: RUN_DIR or RUN_DIR/checkpoints/ckpt_NNNNNN.h5" in err, err


def test_resume_with_a_damaged_or_short_train_h5(finished, tmp_path, capsys):
    """A truncated train.h5 is one line (exit 2, the run left as it was) that says how to go
    on; a missing one, or one that ends before the checkpoint, resumes with a warning naming
    the gap."""
    run = _stopped_at_step_4(finished, tmp_path)
    history = (run / "train.h5").read_bytes()
    (run / "train.h5").write_bytes(history[:3000])
    capsys.readouterr()
    assert _call(["resume", run]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.h5: cannot read") and err.count("\n") == 1
    assert "move it aside" in err and (run / "train.h5").stat().st_size == 3000
    (run / "train.h5").rename(run / "train.h5.broken")
    assert _call(["resume", run, "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "warning: train.h5 is missing: the training history restarts at step 4" in out
    np.testing.assert_array_equal(h5io.read_stats(run / "train.h5")["step"], [4, 5])
    # a history that ends before the checkpoint (step 6 now): rows 0, 1 only
    with h5py.File(run / "train.h5", "w") as f:
        for k, v in h5io.read_stats(finished / "train.h5").items():
            f.create_dataset(f"stats/{k}", data=v[:2], maxshape=(None,))
    assert _call(["resume", run, "--steps", "7"]) == 0
    assert "warning: train.h5 ends at step 1 but the checkpoint is at step 6: steps 2-5 " \
        "have no rows" in capsys.readouterr().out


def test_init_from_a_damaged_checkpoint_file_says_so(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    damaged = ckpt.checkpoint_path(run / "checkpoints", 4)
    damaged.write_bytes(damaged.read_bytes()[:3000])
    stretched = tmp_path / "h2.yaml"
    stretched.write_text(H2)
    capsys.readouterr()
    assert _call(["run", stretched, "--out", tmp_path / "new", "--preset", "tiny",
                  "--set", "run.x64=true", "--set", "sampler.walkers=16",
                  "--init-from", damaged]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read this checkpoint" in err
    assert "do not fit" not in err and not (tmp_path / "new").exists()


def test_finished_run_without_evaluation_hints_what_evaluates(tmp_path):
    """A run with eval.steps 0: `vmc resume RUN --steps N` alone only trains (the resume says
    "evaluation skipped"), so the hint adds --set eval.steps; the plain hint said "evaluates
    again"."""
    from vmc.config import config_from_dict
    from vmc.resume import finished_message
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt_000010.h5").write_bytes(b"")
    he = [{"symbol": "He", "position": [0.0, 0.0, 0.0]}]
    cfg = config_from_dict({"atoms": he}, overrides=("optim.steps=10", "eval.steps=0"))
    msg = finished_message(cfg, run)
    assert "not evaluated (eval.steps: 0)" in msg and "evaluates again" not in msg, msg
    assert (f"`vmc resume {run} --steps 20 --set eval.steps=2000` trains to step 20 and "
            f"evaluates (without --set eval.steps it only trains") in msg, msg
    assert f"`vmc eval {run} --steps 2000` evaluates the final checkpoint (with a new " in msg


def test_a_key_given_twice_in_config_yaml_is_refused(finished, tmp_path, capsys):
    """A hand-edited config.yaml that gives a key twice: resume and eval refuse it (exit 2,
    one line naming the key and lines) and leave the run as it was."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    text = (run / "config.yaml").read_text()
    n = text.count("\n")
    (run / "config.yaml").write_text(text + "name: again\n")
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    capsys.readouterr()
    for argv in (["resume", run], ["eval", run, "--steps", "16"]):
        assert _call(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"error: name: given twice in '{run / 'config.yaml'}' (lines 1 and "
                       f"{n + 1}); valid: one value per key\n"), err
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before


def test_before_the_first_checkpoint_any_setting_may_change_and_the_log_says_so(tmp_path,
                                                                                 capsys):
    """A run stopped before its first checkpoint (config.yaml written, nothing else) restarts
    from step 0, so a resume may change any setting (pretrain.steps here) and says which
    changed; once a checkpoint exists the same change is refused, and the refusal says why
    it was allowed before."""
    from vmc.config import config_from_dict, dump_yaml
    he = [{"symbol": "He", "position": [0.0, 0.0, 0.0]}]
    run = tmp_path / "run"
    run.mkdir()
    cfg = config_from_dict({"atoms": he}, name="He", preset="tiny",
                           overrides=("pretrain.steps=1000", "optim.steps=2", "eval.steps=0"))
    (run / "config.yaml").write_text(dump_yaml(cfg))
    assert _call(["resume", run, "--set", "pretrain.steps=2"]) == 0
    out = capsys.readouterr().out
    assert (f"resume: no checkpoint yet in {run} (stopped before the first one); starting "
            f"from the beginning: the run restarts from step 0 with the changed settings "
            f"pretrain.steps: 1000 -> 2 (any setting may change until the first "
            f"checkpoint") in out, out
    assert ckpt.list_checkpoints(run / "checkpoints")
    assert _call(["resume", run, "--steps", "4", "--set", "pretrain.steps=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: settings differ") and err.count("\n") == 1
    assert "pretrain.steps: 2 there, 3 now" in err
    assert err.endswith("hamiltonian.chunk_walkers, hamiltonian.ecp_rule; any setting may "
                        "change only before a run's first checkpoint (a resume then starts "
                        "again from step 0), and this run has one\n"), err


def test_a_finished_hf_run_is_left_alone(tmp_path, capsys):
    """The hf ansatz has nothing to train: once evaluated, `vmc resume` says it has finished
    instead of adding an evaluation on every call, and --steps is refused."""
    cfg = tmp_path / "h2.yaml"
    cfg.write_text(H2)
    run = tmp_path / "hf"
    assert _call(["run", cfg, "--out", run, "--set", "ansatz.name=hf", "--set",
                  "sampler.walkers=16", "--set", "eval.steps=16", "--set",
                  "sampler.burn_in=0"]) == 0
    capsys.readouterr()
    assert _call(["resume", run]) == 0
    assert (f"{run}: finished: the hf ansatz has no parameters to train, evaluated "
            f"(eval_000); nothing to resume.") in capsys.readouterr().out
    assert _call(["resume", run, "--steps", "100"]) == 2
    assert capsys.readouterr().err.startswith("error: --steps: the run's ansatz has no "
                                              "parameters to train")
    with h5py.File(run / "eval.h5") as f:
        assert list(f) == ["eval_000"]


def test_the_run_directory_lock_admits_one_holder(tmp_path):
    """Two holders of one directory's lock: the second is refused with a line that names the
    first (command and pid) until the first releases it; claim() in one process does the same."""
    a, b = RunDirLock(tmp_path, "vmc run"), RunDirLock(tmp_path, "vmc eval", "--out")
    a.acquire()
    assert f"vmc run, pid {os.getpid()} on host" in (tmp_path / ".lock").read_text()
    with pytest.raises(RunDirBusy, match=r"^--out '.*': in use by another vmc process "
                                         r"\(vmc run, pid \d+ on host .*, since 20"):
        b.acquire()
    with pytest.raises(RunDirBusy):
        claim(b, writer=True)
    claim(b, writer=False)   # a process other than 0 takes no lock
    assert not b.held
    a.release()
    assert (tmp_path / ".lock").read_text() == ""
    claim(b, writer=True)
    assert b.held and "vmc eval, pid" in (tmp_path / ".lock").read_text()
    b.release()


def test_a_run_directory_in_use_is_refused_and_left_alone(finished, tmp_path, capsys):
    """While another process holds run_dir/.lock (say, the run still training), `vmc resume`,
    `vmc eval` and `vmc run --out` into it are refused with exit 2 and one line naming the
    holder, and nothing in the directory changes (not even by the clean-up of bad input)."""
    run = _stopped_at_step_4(finished, tmp_path)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with RunDirLock(run, "vmc run") as holder, RunDirLock(fresh, "vmc run") as other:
        holder.acquire()
        other.acquire()
        before = {p.relative_to(tmp_path).as_posix(): p.read_bytes()
                  for p in tmp_path.rglob("*") if p.is_file()}
        for argv in (["resume", run, "--steps", "8"], ["eval", run, "--steps", "16"],
                     ["run", finished.parent / "h2.yaml", "--out", fresh, "--preset", "tiny"]):
            capsys.readouterr()
            assert _call(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "in use by another vmc process (vmc run, pid" in err[0], err
        assert {p.relative_to(tmp_path).as_posix(): p.read_bytes()
                for p in tmp_path.rglob("*") if p.is_file()} == before


def test_resume_and_eval_hold_the_lock_while_they_write(finished, tmp_path, monkeypatch):
    """A second process is kept out for the whole of `vmc resume` and `vmc eval`: their
    evaluations run while the lock is held, and it is free again when they return."""
    import vmc.run
    run = _stopped_at_step_4(finished, tmp_path)
    seen = []
    original = vmc.run.run_evaluation

    def probe(*args, **kwargs):
        with pytest.raises(RunDirBusy):
            RunDirLock(run, "probe").acquire()
        seen.append(True)
        return original(*args, **kwargs)
    monkeypatch.setattr(vmc.run, "run_evaluation", probe)
    assert _call(["resume", run]) == 0
    assert _call(["eval", run, "--steps", "16"]) == 0
    assert seen == [True, True]
    with RunDirLock(run, "probe") as free:
        free.acquire()
        assert free.held
