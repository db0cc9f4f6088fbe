"""Temporary files for atomic replacement, owned under a lock; safe removal of leftovers.

A temporary file for ``dir/name`` is ``dir/.name.<host>.<pid>.<random>.tmp``. Its writer
creates it exclusively and holds ``flock(LOCK_EX)`` on it from creation until it is renamed
over ``dir/name`` (or removed). The kernel drops the lock when the writer dies, however it
dies, so a held lock means a live owner.

A leftover is removed (:func:`remove_stale_temps`) only when no process holds its lock and

* it was made on this host by this process or by a process that no longer runs, or
* it was made elsewhere (a requeued job on another node sharing the folder, or a name
  without a host) and has not been modified for ``TEMP_GRACE_S`` seconds: a process id
  from another host says nothing here, and over NFS a lock may be released early.

Where the filesystem has no flock, only the same-host rule applies. A file that cannot be
opened for writing (another user's) is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import socket
import time
import uuid
from typing import Iterator

__all__ = ["TEMP_GRACE_S", "temp_path", "locked_temp", "remove_stale_temps",
           "remove_stale_temps_in", "fsync_file", "fsync_dir"]

TEMP_GRACE_S = 15 * 60


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def temp_path(path) -> pathlib.Path:
    """A fresh temp name next to ``path``: ``.<name>.<host>.<pid>.<random>.tmp``."""
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def locked_temp(path, keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[pathlib.Path]:
    """Create a temp file for ``path``, hold its lock, yield its name; clean up after.

    The caller writes the file by name and ``os.replace``-s it over ``path`` inside the
    block. On leaving, the temp file is removed if it still exists, except after an
    exception of a type in ``keep_on`` (it is then left, unlocked, as a crash would).
    """
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    keep = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no flock on this filesystem: the same-host rule still protects it
        yield tmp
    except keep_on:
        keep = True
        raise
    finally:
        if not keep:
            tmp.unlink(missing_ok=True)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. PermissionError: another user's live process
    return True


def _owner(name: str, live: str) -> tuple[str | None, int | None]:
    """(host, pid) from a temp name for ``live`` (None where the name has none)."""
    parts = name[len(live) + 2:].split(".")
    if len(parts) == 4 and parts[1].isdigit():      # host.pid.random.tmp
        return parts[0], int(parts[1])
    return None, None                               # older or foreign name


def _remove_if_abandoned(tmp: pathlib.Path, host: str | None, pid: int | None) -> bool:
    try:
        fd = os.open(tmp, os.O_RDWR)
    except OSError:
        return False  # gone, or not ours to touch
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free: bool | None = True
        except BlockingIOError:
            return False  # a live writer holds it
        except OSError:
            free = None   # no flock here: cannot tell
        if host == _host() and pid is not None:
            # our own write would hold the lock; without flock we cannot tell it apart
            dead = free is True if pid == os.getpid() else not _pid_alive(pid)
        else:
            dead = free is True and time.time() - os.fstat(fd).st_mtime > TEMP_GRACE_S
        if dead:
            tmp.unlink(missing_ok=True)
        return dead
    finally:
        os.close(fd)


def remove_stale_temps(path) -> list[pathlib.Path]:
    """Remove abandoned temp files of ``path`` (see the module docstring); return them."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        return []
    pat = f".{_glob_escape(path.name)}.*.tmp"
    return [t for t in sorted(path.parent.glob(pat))
            if _remove_if_abandoned(t, *_owner(t.name, path.name))]


def remove_stale_temps_in(folder, live_glob: str) -> list[pathlib.Path]:
    """Remove abandoned temp files of every ``folder/<live_glob>`` file; return them.

    ``live_glob`` matches the final names, e.g. ``ckpt_*.h5``.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for t in sorted(folder.glob(f".{live_glob}.*.tmp")):
        live = t.name[1:].rsplit(".", 4)[0]   # strip .host.pid.random.tmp
        if _remove_if_abandoned(t, *_owner(t.name, live)):
            out.append(t)
    return out


def _glob_escape(name: str) -> str:
    """Escape glob metacharacters in a file name."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def fsync_file(path) -> None:
    """fsync a file by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder) -> None:
    """fsync a directory so that a rename in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
