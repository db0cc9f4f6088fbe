"""The console log of `vmc run`, `vmc resume` and `vmc eval`, mirrored into RUN_DIR/run.log.

Only process 0 prints and writes (vmc.parallel.is_writer). Lines logged before the run
directory may be written (while the input is still being checked, so that bad input leaves
nothing behind) are kept in memory and written with their own timestamps once the run calls
`attach()`. Every line of run.log starts with a UTC timestamp, ``2026-12-01T13:20:01Z``.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Optional

LOG_NAME = "run.log"


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class RunLog:
    """A callable `log(message)`: prints on process 0 and appends to run.log once attached.

    Args:
      run_dir: the run directory; run.log goes there.
      stream: where the console lines go (default sys.stdout).
    """

    def __init__(self, run_dir, stream=None):
        self.path = pathlib.Path(run_dir) / LOG_NAME
        self.stream = stream
        self._pending: list[tuple[float, str]] = []
        self._attached = False
        self._console = True    # False once the console is gone (closed pipe, lost terminal)

    @staticmethod
    def _writer() -> bool:
        from vmc.parallel import is_writer
        return is_writer()

    def __call__(self, message: str) -> None:
        if not self._writer():
            return
        self._pending.append((time.time(), str(message)))
        if self._console:
            try:
                print(message, file=self.stream or sys.stdout, flush=True)
            except (OSError, ValueError):   # `vmc run ... | head`, a dead ssh session
                self._console_lost()
        if self._attached:
            self._flush()

    def _console_lost(self) -> None:
        """Stop printing and go on: the run's files, run.log included, still get every
        line. Python's own flush of sys.stdout at exit goes to /dev/null, so it cannot fail
        either (the Python docs' advice for SIGPIPE)."""
        self._console = False
        self._pending.append((time.time(), "warning: the console is gone (its pipe or "
                                           "terminal closed); this run goes on and logs to "
                                           "run.log only"))
        if self.stream is None or self.stream is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass

    def attach(self) -> None:
        """From now on write to run.log (the run directory exists and input is checked)."""
        if self._writer() and self.path.parent.is_dir():
            self._attached = True
            self._flush()

    def error(self, message: str) -> None:
        """Record an error line (printed by the caller on stderr) in run.log if attached and
        still there (bad input removes what the run created, run.log included)."""
        if self._attached and self._writer() and self.path.is_file():
            self._pending.append((time.time(), message))
            self._flush()

    def _flush(self) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                for t, msg in self._pending:
                    for line in msg.splitlines() or [""]:
                        f.write(f"{_stamp(t)} {line}\n")
            self._pending.clear()
        except OSError:   # a full disk must not stop the run; the console still has it
            pass


def attach(log) -> None:
    """Call `log.attach()` when `log` is a RunLog (a plain callable is left alone)."""
    fn: Optional[callable] = getattr(log, "attach", None)
    if fn is not None:
        fn()
