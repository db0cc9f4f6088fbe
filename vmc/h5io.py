"""Crash-safe HDF5 output: per-step stats (train.h5) and evaluation groups (eval.h5).

Guarantee: ``train.h5`` and ``eval.h5`` open with plain h5py after a SIGKILL at any moment
and while a run writes them; rows appended after the last completed flush may be lost.

Stats (:class:`StatsWriter`) are appended in place. Each column is a 1-D dataset stored as
one chunk whose length (the capacity, a power of two >= 1024 rows) exceeds the row count;
the dataset's shape is the row count. A flush writes the new values into the chunk past
the visible rows, then each column's new length (one in-place rewrite of its dataspace
message): nothing is allocated, no index or superblock field changes, so a kill between
any two writes leaves each column at its old or new length with every visible value
written. After a kill mid-flush columns may differ by that flush; ``read_stats`` and the
next writer cut them to the shortest. The chunk cache is off (``rdcc_nbytes=0``), so a
flush writes only the new rows: O(rows appended), whatever the file size. Anything that
allocates (a new file, group or column, growth past the capacity, a cut to zero rows, an
older layout) rebuilds the file into a temporary file and ``os.replace``-s it (atomic);
growth doubles the capacity, so rebuilds cost amortized O(1) per row. Stats are not
fsync-ed (a SIGKILL keeps the page cache; power loss may lose the latest flushes).

Not SWMR: after a SIGKILL its superblock flags make plain h5py refuse the file and h5py
has no h5clear. Not a plain resize of 1024-row chunks: a kill inside a flush that
allocates a chunk can leave an index pointing past the stored end of file, or a length
over an unindexed chunk. ``scripts/kill_resume.py --syscalls`` kills a writer at every
write syscall and checks this scheme.

Evaluation groups (:func:`write_group`) are copied, fsync-ed and replaced atomically.
Temporary files are locked by their writer and removed only when abandoned (see
``vmc._tempfiles``). Readers open with ``locking=False`` and retry briefly on a transient
failure. This module imports no JAX so that readers (``vmc analyze``) start fast.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import time
from typing import Callable, Iterator, Mapping, TypeVar

import h5py
import numpy as np

from vmc._tempfiles import (TEMP_GRACE_S, fsync_dir, fsync_file, locked_temp,
                            remove_stale_temps)

__all__ = ["StatsWriter", "read_stats", "read_columns", "open_read", "write_group",
           "next_group_name", "TEMP_GRACE_S"]

_STEP = "step"
_MIN_CAPACITY = 1024
_MAX_CAPACITY = 2 ** 28          # one chunk must stay below 4 GiB (8-byte values)
_READ_TRIES, _READ_WAIT_S = 20, 0.05
_T = TypeVar("_T")


# ---------------------------------------------------------------- test-only kill switch
_KILL_COUNTS: dict[str, int] = {}


def _kill_due(point: str) -> bool:
    """Count one pass through ``point``; True when ``VMC_TEST_KILL`` asks to die at it.

    ``VMC_TEST_KILL=stats_flush@3,checkpoint_write@2`` (comma-separated ``point@N``) names
    the N-th pass (1-based, counted per process) of each point. Points: ``stats_flush``
    (a flush of any StatsWriter), ``eval_write`` (write_group), ``checkpoint_write`` and
    ``checkpoint_data`` (vmc.checkpoint.save). Test-only; unset in normal runs.
    """
    spec = os.environ.get("VMC_TEST_KILL")
    if not spec:
        return False
    n = _KILL_COUNTS[point] = _KILL_COUNTS.get(point, 0) + 1
    for item in spec.split(","):
        name, _, at = item.strip().partition("@")
        if name == point and at.strip().isdigit() and int(at) == n:
            return True
    return False


def _kill_now() -> None:
    """SIGKILL this process (test-only kill switch)."""
    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- reading
def _retry(fn: Callable[[], _T]) -> _T:
    """Call ``fn``; on OSError/KeyError other than a missing file retry for ~1 s."""
    for i in range(_READ_TRIES):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except (OSError, KeyError, ValueError):
            if i == _READ_TRIES - 1:
                raise
            time.sleep(_READ_WAIT_S)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def open_read(path) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only for a reader of a possibly live run.

    ``locking=False`` (a writer elsewhere must not block or be blocked by readers); the open
    is retried for about a second on a transient failure.

    Raises:
        FileNotFoundError: no file. OSError: not an HDF5 file (after the retries).
    """
    f = _retry(lambda: h5py.File(path, "r", locking=False))
    try:
        yield f
    finally:
        f.close()


def read_columns(group: h5py.Group) -> dict[str, np.ndarray]:
    """All 1-D datasets of a stats group, cut to their common (shortest) length.

    Columns differ in length only after a kill in the middle of a flush; the shortest
    length holds complete rows.
    """
    data = {k: d[()] for k, d in group.items() if isinstance(d, h5py.Dataset)}
    n = min((len(v) for v in data.values() if np.ndim(v) == 1), default=0)
    return {k: (v[:n] if np.ndim(v) == 1 else v) for k, v in data.items()}


def read_stats(path, group: str = "stats") -> dict[str, np.ndarray]:
    """Read all columns of a stats table (also while a writer appends to it).

    Returns:
        ``{name: (n_rows,) array}``; ``step`` int64, others float64; all of one length.

    Raises:
        FileNotFoundError: no file at ``path``.
        KeyError: the file has no group ``group``.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no stats file {path}")

    def read():
        with h5py.File(path, "r", locking=False) as f:
            if group not in f:
                return None, sorted(f.keys())
            return read_columns(f[group]), None
    out, have = _retry(read)
    if out is None:
        raise KeyError(f"{path} has no group '{group}' (has: {have})")
    return out


# ------------------------------------------------------------------------- stats table
def _with_new_columns(old: dict, cols: dict) -> dict:
    """`old` columns plus NaN-filled columns for the keys only `cols` has (an older run's
    file meeting rows of a newer version)."""
    n = min((len(v) for v in old.values()), default=0)
    return {**{k: np.full(n, np.nan) for k in cols if k not in old}, **old}


def _dtype(name: str) -> type:
    return np.int64 if name == _STEP else np.float64


def _open_append(path: pathlib.Path) -> h5py.File:
    # No chunk cache: a partial write of the (large, unfiltered) chunk goes straight to
    # the new rows' bytes instead of reading and rewriting the whole chunk.
    return h5py.File(path, "r+", locking=False, rdcc_nbytes=0)


def _in_place_ok(ds, n: int, total: int) -> bool:
    """Whether every dataset of ``ds`` is one allocated chunk with room for ``total`` rows."""
    for d in ds:
        if not (isinstance(d, h5py.Dataset) and d.ndim == 1 and d.chunks is not None
                and d.chunks[0] >= total and n >= 1 and d.id.get_num_chunks() == 1):
            return False
        plist = d.id.get_create_plist()   # no filter (compression, checksum, shuffle)
        if plist.get_nfilters():
            return False
    return True


def _capacity(rows: int) -> int:
    cap = _MIN_CAPACITY
    while cap < rows + rows // 2:
        cap *= 2
    if cap > _MAX_CAPACITY:
        raise ValueError(f"stats table of {rows} rows exceeds the {_MAX_CAPACITY}-row limit")
    return cap


class StatsWriter:
    """Append rows of scalars to 1-D datasets ``/<group>/<name>`` of an HDF5 file.

    Rows are buffered in memory and written every ``flush_every`` rows (and by
    :meth:`flush` / :meth:`close`), each flush crash-safe (see the module docstring).
    The row keys are fixed by the first row, or by the datasets already in the file's
    group when resuming; column ``step`` is stored as int64, all others as float64.

    Args:
        path: HDF5 file; created on the first flush. Parent folder must exist.
        group: group holding one dataset per column.
        flush_every: rows buffered between automatic flushes (>= 1).

    Raises:
        ValueError: ``flush_every < 1``.
    """

    def __init__(self, path, group: str = "stats", flush_every: int = 20):
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = pathlib.Path(path)
        self.group = str(group)
        self.flush_every = int(flush_every)
        self._keys: tuple[str, ...] | None = None
        self._rows: list[dict[str, float | int]] = []
        remove_stale_temps(self.path)  # left by a process killed mid-rebuild
        if self.path.exists():
            with open_read(self.path) as f:
                if self.group in f and len(f[self.group]):
                    self._keys = tuple(sorted(f[self.group].keys()))

    @property
    def keys(self) -> tuple[str, ...] | None:
        """Column names (sorted), or None before the first row."""
        return self._keys

    def append(self, row: Mapping[str, float | int]) -> None:
        """Buffer one row of scalars; flush when ``flush_every`` rows are buffered.

        Raises:
            ValueError: keys differ from the first row's (or the file's), a key contains
                '/', or a value is not a scalar.
        """
        keys = tuple(sorted(row))
        if self._keys is None:
            bad = [k for k in keys if "/" in k or not k]
            if bad:
                raise ValueError(f"stats names must be non-empty without '/': {bad}")
            self._keys = keys
        elif set(keys) > set(self._keys):
            # a column added by a newer version (resuming an older run): the rows written
            # before it read NaN there; the next flush rebuilds the file once
            self._keys = keys
        elif keys != self._keys:
            missing = sorted(set(self._keys) - set(keys))
            extra = sorted(set(keys) - set(self._keys))
            raise ValueError(f"stats row keys changed: missing {missing}, unexpected {extra}"
                             f" (columns of /{self.group} in {self.path})")
        clean = {}
        for k, v in row.items():
            a = np.asarray(v)
            if a.ndim != 0:
                raise ValueError(f"stats value '{k}' must be a scalar, got shape {a.shape}")
            clean[k] = int(a) if k == _STEP else float(a)
        self._rows.append(clean)
        if len(self._rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (no-op if nothing is buffered).

        Raises:
            ValueError: the file's group has other columns than the rows.
        """
        if not self._rows:
            return
        cols = {k: np.array([r[k] for r in self._rows], dtype=_dtype(k)) for k in self._keys}
        kill = _kill_due("stats_flush")
        if not self._append_in_place(cols, kill):
            def edit(old):
                if old is None:
                    return cols
                old = _with_new_columns(old, cols)
                return {k: np.concatenate([old[k], v]) for k, v in self._check(old, cols)}
            self._rebuild(edit, kill)
        self._rows = []

    def _check(self, have, cols: dict[str, np.ndarray]):
        """``cols.items()`` after checking that the file's columns ``have`` match them."""
        if set(have) != set(cols):
            raise ValueError(
                f"{self.path}: /{self.group} has columns {sorted(have)}, rows have "
                f"{sorted(cols)}; a run's stats columns cannot change on resume")
        return cols.items()

    def _append_in_place(self, cols: dict[str, np.ndarray], kill: bool) -> bool:
        """Append ``cols`` in place if the layout allows; False if a rebuild is needed."""
        if not self.path.exists():
            return False
        with _open_append(self.path) as f:
            if self.group not in f:
                return False
            g = f[self.group]
            if set(g.keys()) < set(cols):
                return False          # new columns: rebuild once (see append)
            self._check(g.keys(), cols)
            ds = {k: g[k] for k in sorted(cols)}
            n = min(d.shape[0] for d in ds.values())
            k_new = len(next(iter(cols.values())))
            if not _in_place_ok(ds.values(), n, n + k_new):
                return False
            for i, (k, d) in enumerate(ds.items()):
                col = cols[k]
                d.resize((n + k_new,))    # also cuts a column left longer by a kill
                d[n:] = col
                if kill and i == len(cols) // 2:
                    f.flush()
                    _kill_now()
        return True

    def _rebuild(self, edit: Callable[[dict | None], dict | None], kill: bool = False) -> None:
        """Write a fresh file whose group is ``edit(old columns or None)`` (None: drop it);
        other groups are copied; replace the live file atomically."""
        old = None
        src = open_read(self.path) if self.path.exists() else contextlib.nullcontext()
        with src as f, locked_temp(self.path) as tmp:
            if f is not None and self.group in f:
                old = read_columns(f[self.group])
            new = edit(old)
            with h5py.File(tmp, "w", locking=False, rdcc_nbytes=0) as out:
                if f is not None:
                    for name in f:
                        if name != self.group:
                            f.copy(f[name], out, name)
                    for a, v in f.attrs.items():
                        out.attrs[a] = v
                if new is not None:
                    g = out.create_group(self.group)
                    if f is not None and self.group in f:
                        for a, v in f[self.group].attrs.items():
                            g.attrs[a] = v
                    rows = len(next(iter(new.values())))
                    for k, v in sorted(new.items()):
                        d = g.create_dataset(k, shape=(rows,), maxshape=(None,),
                                             chunks=(_capacity(rows),), dtype=_dtype(k))
                        d[:] = v
            if kill:
                _kill_now()
            os.replace(tmp, self.path)

    def truncate(self, step: int) -> None:
        """Keep only rows with ``step <= step``, in the file and in the buffer.

        Used on resume from a checkpoint at ``step``: rows written after it are dropped.

        Raises:
            ValueError: the table has no ``step`` column.
        """
        self._rows = [r for r in self._rows if r[_STEP] <= step] if self._rows else []
        if self._keys is not None and _STEP not in self._keys:
            raise ValueError(f"cannot truncate {self.path}: no '{_STEP}' column")
        if not self.path.exists():
            return
        with _open_append(self.path) as f:
            if self.group not in f:
                return
            g = f[self.group]
            if _STEP not in g:
                raise ValueError(f"cannot truncate {self.path}: no '{_STEP}' column")
            ds = list(g.values())
            n = min(d.shape[0] for d in ds)
            keep = g[_STEP][:n] <= step
            m = int(keep.sum())
            if m == n and all(d.shape[0] == n for d in ds):
                return
            if m >= 1 and keep[:m].all() and _in_place_ok(ds, n, n):
                for d in ds:                # a cut inside the one chunk frees nothing
                    d.resize((m,))
                return
        self._rebuild(lambda old: None if old is None or not keep.any()
                      else {k: v[:len(keep)][keep] for k, v in old.items()})

    def close(self) -> None:
        """Flush the buffered rows."""
        self.flush()

    def __enter__(self) -> "StatsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ evaluation groups
def write_group(path, group: str, arrays: Mapping[str, np.ndarray], attrs: Mapping) -> None:
    """Add one new group ``/<group>`` holding ``arrays`` as datasets and ``attrs``, atomically.

    The file is created if absent. A crash at any moment leaves the file with all
    earlier groups readable (and this one either complete or absent).

    Args:
        path: HDF5 file (e.g. eval.h5).
        group: new group name, e.g. from :func:`next_group_name`.
        arrays: ``{name: array}``; any shape, numeric or bool dtype.
        attrs: ``{name: str | int | float | bool | array}`` group attributes.

    Raises:
        ValueError: the group already exists.
    """
    path = pathlib.Path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    remove_stale_temps(path)
    kill = _kill_due("eval_write")
    with locked_temp(path) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a", locking=False) as f:
            if group in f:
                raise ValueError(f"{path} already has group '{group}'")
            g = f.create_group(group)
            for k, v in arrays.items():
                g.create_dataset(k, data=v)
            for k, v in attrs.items():
                g.attrs[k] = v
        fsync_file(tmp)
        if kill:
            _kill_now()
        os.replace(tmp, path)
        fsync_dir(path.parent)


def next_group_name(path, prefix: str = "eval_") -> str:
    """First unused name ``<prefix>NNN`` after the highest one in the file.

    Returns ``prefix + "000"`` when the file is absent; 3 digits, more if needed.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return f"{prefix}000"
    pat = re.compile(re.escape(prefix) + r"(\d+)$")
    with open_read(path) as f:
        nums = [int(m.group(1)) for k in f.keys() if (m := pat.match(k))]
    return f"{prefix}{max(nums, default=-1) + 1:03d}"
