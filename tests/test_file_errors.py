"""File-system faults end in one `error:` line: an unwritable run folder is bad input found
before any computation (exit 2); a write refused mid-run (disk full, quota, read-only) exits
1 with one line that names the file, not a traceback."""

import errno

import pytest

from vmc import cli, precheck
from vmc.errors import InputError


def test_unwritable_run_folder_is_refused_before_anything_runs(tmp_path, monkeypatch):
    real = precheck.os.access
    monkeypatch.setattr(precheck.os, "access",
                        lambda path, mode: False if str(path) == str(tmp_path) else real(path, mode))
    with pytest.raises(InputError, match=r"cannot write there .*valid: a folder you can write"):
        precheck.check_run_dir(tmp_path, resume=True)
    precheck.check_run_dir(tmp_path / "new", resume=False)   # a folder still to be made


@pytest.mark.parametrize("err, reason", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/.train.h5.tmp"),
     "no space left on device"),
    (OSError("Can't synchronously write data (file write failed: filename = "
             "'/runs/x/.train.h5.vm.1.tmp', errno = 28, error message = 'No space left on "
             "device')"), "no space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "/runs/x/config.yaml"),
     "read-only file system"),
    (RuntimeError("Disable slist on flush dest failure failed (file write failed: filename = "
                  "'/runs/x/checkpoints/.ckpt_000600.h5.vm.9.tmp', errno = 28, error message "
                  "= 'No space left on device')"), "no space left on device")])
def test_a_refused_write_is_one_line_naming_the_file(err, reason, monkeypatch, capsys):
    def refuse(args):
        raise err
    monkeypatch.setattr(cli, "_check", refuse)
    assert cli.main(["check", "systems/He.yaml"]) == 1
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and out.startswith("error: cannot write /runs/x/")
    assert reason in out and "vmc resume" in out and ".tmp" not in out


def test_other_errors_still_raise(monkeypatch):
    def broken(args):
        raise OSError(errno.ENOENT, "No such file or directory", "x")
    monkeypatch.setattr(cli, "_check", broken)
    with pytest.raises(OSError):
        cli.main(["check", "systems/He.yaml"])


def test_a_signal_during_start_up_exits_75_with_one_line():
    """Before a run installs its handlers (JAX still importing), a preemption must still
    exit 75, so that the SLURM templates requeue the job."""
    import subprocess
    import sys
    code = ("import os, signal, time, vmc.cli as c; c._stop_early_on_signals(); "
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 75
    assert proc.stderr == ("stopped by SIGTERM during start-up, before the run began; the same "
                           "command starts it again\n")


def test_analyze_into_a_read_only_folder_names_the_way_out(monkeypatch, capsys):
    from vmc import analyze

    def refuse(args):
        raise OSError(errno.EROFS, "Read-only file system", "/runs/x/training.png")
    monkeypatch.setattr(analyze, "_run", refuse)
    assert analyze.main(["/runs/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write /runs/x/training.png" in err
    assert "--no-plots" in err and "--plots-dir" in err
