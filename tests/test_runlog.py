"""The run log: a console that goes away (a closed pipe, a lost terminal) never ends a run."""

import subprocess
import sys

from vmc.runlog import RunLog


class _ClosedPipe:
    """A console stream whose reader has gone: every write raises BrokenPipeError."""

    def __init__(self):
        self.writes = 0

    def write(self, text):
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_console_keeps_logging_to_run_log(tmp_path):
    stream = _ClosedPipe()
    log = RunLog(tmp_path, stream=stream)
    log("step 1")
    log.attach()
    log("step 2")
    log("energy -1.17 Ha; results in run")
    assert stream.writes == 1                     # tried once, then left alone
    lines = (tmp_path / "run.log").read_text().splitlines()
    text = [line.split(" ", 1)[1] for line in lines]
    assert text[0] == "step 1" and text[-2:] == ["step 2", "energy -1.17 Ha; results in run"]
    assert any(t.startswith("warning: the console is gone") for t in text), text


def test_run_piped_into_a_reader_that_stops_finishes(tmp_path):
    """`vmc run ... | head -1`: the run goes on to its evaluation and summary (exit 0, no
    traceback) instead of dying on the first line after the reader left."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmc.cli", "run", "systems/H2.yaml", "--out",
         str(tmp_path / "run"), "--preset", "tiny", "--set", "optim.steps=30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
    first = proc.stdout.readline()
    proc.stdout.close()                           # the reader stops, as `head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 0, err[-2000:]
    assert first and "Traceback" not in err
    log = (tmp_path / "run" / "run.log").read_text()
    assert "results in" in log and (tmp_path / "run" / "summary.json").is_file()
