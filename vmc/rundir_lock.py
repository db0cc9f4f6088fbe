"""One vmc process at a time per run directory: an advisory lock on `run_dir/.lock`.

Two processes that write one run directory (a `vmc resume` or `vmc eval` started while the
run still trains, or a job requeued while its first attempt lives on) interleave rows in
train.h5, rotate each other's checkpoints and overwrite summary.json. `vmc run`, `vmc resume`
and `vmc eval` therefore hold an exclusive `flock` on `run_dir/.lock` while they write;
process 0 of a multi-process run holds it (it alone writes the directory) and every process
learns whether it got it. The kernel drops the lock when its holder exits, killed or not, so
a crashed run leaves no stale lock behind. The file records who holds it (command, pid,
host, start time) for the error message. File systems without `flock` (some network
mounts) get no lock rather than an error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import socket
import time
from typing import Optional

from vmc.errors import InputError

LOCK_NAME = ".lock"


class RunDirBusy(InputError):
    """Another process holds the run directory's lock (exit code 2, like bad input; unlike
    other input errors, nothing in the directory is removed: it belongs to the holder)."""


class RunDirLock:
    """An exclusive lock on one run directory, held from `acquire` until `release`.

    Args:
      run_dir: the run directory (it must exist when `acquire` is called).
      command: what this process runs, for the holder line ("vmc run", "vmc eval").
      label: how error messages name the directory ("--out", "run_dir").
    """

    def __init__(self, run_dir: pathlib.Path, command: str, label: str = "run_dir"):
        self.path = pathlib.Path(run_dir) / LOCK_NAME
        self.command, self.label = command, label
        self._fd = None

    def acquire(self) -> None:
        """Take the lock (a no-op if this object holds it already).

        Raises:
          RunDirBusy: another process holds it; the message names that process.
        """
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)   # no flock on this file system: go on without a lock
                return
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"{self.label} {str(self.path.parent)!r}: in use by another vmc process "
                f"({holder}); wait for it to finish or stop it (SIGTERM checkpoints a "
                f"training run), then retry") from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.pwrite(fd, f"{self.command}, pid {os.getpid()} on host {socket.gethostname()}, "
                      f"since {stamp}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (the file stays; a no-op if it is not held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)   # closing the last descriptor drops the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def claim(lock: RunDirLock, writer: Optional[bool] = None) -> None:
    """Process 0 takes `lock`; every process learns whether it got it.

    Every process of the run must call this at the same point (one tiny collective).
    writer: whether this process takes the lock; None: `vmc.parallel.is_writer()`.

    Raises:
      RunDirBusy: on every process, when process 0 could not take it.
    """
    from vmc import parallel
    if writer is None:
        writer = parallel.is_writer()
    busy = None
    if writer:
        try:
            lock.acquire()
        except RunDirBusy as err:
            busy = err
    (any_busy,) = parallel.any_processes([busy is not None])
    if busy is not None:
        raise busy
    if any_busy:
        raise RunDirBusy(f"{lock.label} {str(lock.path.parent)!r}: in use by another vmc "
                         f"process (process 0 could not take its lock)")
