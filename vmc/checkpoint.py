"""HDF5 checkpoints of named pytrees: one dataset per leaf, atomic, checksummed, no pickle.

Layout of ``ckpt_000500.h5``: for each named tree (``params``, ``opt_state``, ``walkers``,
``sampler``, ``key``, ...) a group ``/<name>`` holding one dataset per leaf, named by its
pytree path, e.g. ``/params/ferminet/layer_0/kernel`` or ``/opt_state/0/mu/dense/bias``
(a tree that is a single array is the dataset ``/<name>`` itself). Dtypes are stored
exactly, so a round trip is bit-exact. Typed PRNG keys are stored as their ``key_data``
(uint32) with the dataset attribute ``prng_impl``. File attributes: ``step``,
``schema_version``, ``code_version``, ``checksum`` and the caller's attrs (e.g. ``config``,
the resolved config as a YAML string).

The checksum is sha256 over, in sorted dataset-name order, each name, dtype, shape and
raw bytes, followed by the attributes; restoring a file whose checksum does not match
raises :class:`CheckpointError`.

Writes are atomic: a temp file ``.ckpt_000500.h5.<host>.<pid>.<random>.tmp`` in the same
folder is written under an exclusive lock, fsync-ed, then ``os.replace``-d to the final name
and the folder fsync-ed. Leftovers of killed writers are removed by :func:`latest_valid`
only when provably abandoned (lock free and a dead writer on this host, or idle for
``vmc.h5io.TEMP_GRACE_S`` when made elsewhere; see ``vmc._tempfiles``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import warnings
from typing import Any, Callable, Mapping

import h5py
import jax
import numpy as np

import vmc
from vmc._tempfiles import fsync_dir, fsync_file, locked_temp, remove_stale_temps_in
from vmc.h5io import _kill_due, _kill_now

__all__ = ["SCHEMA_VERSION", "CheckpointError", "NonFiniteError", "save", "restore",
           "read_attrs", "read_tree_raw", "checkpoint_path", "list_checkpoints",
           "latest_valid", "prune"]

SCHEMA_VERSION = 3   # 2: FermiNet one-electron rows reordered (ansatz.ferminet.params_from_schema1)
                     # 3: KFAC state holds Cholesky factors (optim.kfac_schema.from_schema2)
_RESERVED = ("schema_version", "code_version", "checksum")
_NAME_RE = re.compile(r"^ckpt_(\d+)\.h5$")
_LIVE_GLOB = "ckpt_*.h5"

# Test-only fault injection. ``_FAULT = "abort_halfway"`` makes :func:`save` write half of
# the datasets to its temp file and raise RuntimeError, leaving the temp file behind like
# a crash would. The env var ``VMC_FAULT_INJECT=checkpoint_abort`` (read by save() only)
# makes it exit the process with ``os._exit(17)`` at the same point. The kill switch
# ``VMC_TEST_KILL=checkpoint_data@N`` SIGKILLs the process at that point of its N-th save,
# ``VMC_TEST_KILL=checkpoint_write@N`` after the N-th save's temp file is complete and
# fsync-ed, before the rename (see vmc.h5io._kill_due).
_FAULT: str | None = None


class CheckpointError(Exception):
    """A checkpoint cannot be written or read: corrupt, truncated, or not matching."""


class NonFiniteError(CheckpointError):
    """A leaf to be saved contains NaN or Inf."""


class _InjectedFault(RuntimeError):
    """Raised by the test-only fault injection; save() leaves its temp file behind."""


# ------------------------------------------------------------------------------- naming
def _key_str(k: Any) -> str:
    """One path component (DictKey.key, GetAttrKey.name, SequenceKey.idx), HDF5-escaped."""
    attr = next((a for a in ("key", "name", "idx") if hasattr(k, a)), None)
    s = str(getattr(k, attr)) if attr else str(k)
    s = s.replace("%", "%25").replace("/", "%2F")
    return {"": "%00", ".": "%2E", "..": "%2E%2E"}.get(s, s)


def _flatten(name: str, tree: Any) -> list[tuple[str, Any]]:
    """``[(dataset name, leaf)]`` in flatten order; a single-leaf tree is ``name`` itself."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join([name, *map(_key_str, p)]), leaf) for p, leaf in leaves]


def _is_prng_key(x: Any) -> bool:
    dt = getattr(x, "dtype", None)
    return dt is not None and jax.dtypes.issubdtype(dt, jax.dtypes.prng_key)


def _to_numpy(dname: str, leaf: Any) -> tuple[np.ndarray, str | None]:
    """Leaf -> (array to store, prng impl name or None)."""
    if _is_prng_key(leaf):
        return np.asarray(jax.random.key_data(leaf)), str(jax.random.key_impl(leaf))
    arr = np.asarray(leaf)
    if arr.dtype.kind not in "biufc" or arr.dtype.name == "bfloat16":
        raise CheckpointError(f"leaf '{dname}' has unsupported dtype {arr.dtype}")
    return arr, None


# ----------------------------------------------------------------------------- checksum
def _hash_leaf(h: "hashlib._Hash", dname: str, arr: np.ndarray, impl: str | None) -> None:
    head = f"{dname}\0{arr.dtype.str}\0{impl or ''}\0{arr.shape}\0"
    h.update(head.encode())
    h.update(np.ascontiguousarray(arr).tobytes())


def _norm_attr(v: Any) -> tuple[str, Any]:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        return ("s", v)
    if isinstance(v, (bool, np.bool_)):
        return ("b", bool(v))
    if isinstance(v, (int, np.integer)):
        return ("i", int(v))
    if isinstance(v, (float, np.floating)):
        return ("f", float(v).hex())
    raise CheckpointError(f"attribute value {v!r} must be str, int, float or bool")


def _hash_attrs(h: "hashlib._Hash", attrs: Mapping[str, Any]) -> None:
    for k in sorted(attrs):
        if k != "checksum":
            h.update(repr((k, _norm_attr(attrs[k]))).encode())


def _py_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in raw.items():
        if k != "checksum":
            kind, val = _norm_attr(v)
            out[k] = float.fromhex(val) if kind == "f" else val
    return out


# --------------------------------------------------------------------------------- save
def save(path, tree: Mapping[str, Any], attrs: Mapping[str, str | int | float]) -> None:
    """Write a checkpoint of named pytrees atomically.

    Args:
        path: final file, e.g. ``checkpoint_path(dir, step)``; its folder must exist.
        tree: ``{name: pytree}``; names non-empty without '/'. Leaves are arrays or
            scalars of bool/int/uint/float/complex dtype, or typed PRNG keys.
        attrs: must hold ``step`` (int); values str, int, float or bool. The names
            ``schema_version``, ``code_version``, ``checksum`` are reserved.

    Raises:
        NonFiniteError: a float leaf holds NaN/Inf (named); nothing is written.
        CheckpointError: unsupported leaf dtype or attribute type.
        ValueError: bad tree name, missing ``step`` or a reserved attribute name.
    """
    path = pathlib.Path(path)
    if "step" not in attrs or isinstance(attrs["step"], bool) or not isinstance(
            attrs["step"], (int, np.integer)):
        raise ValueError("checkpoint attrs must hold an int 'step'")
    reserved = [k for k in attrs if k in _RESERVED]
    if reserved:
        raise ValueError(f"checkpoint attrs {reserved} are reserved")
    file_attrs = {**attrs, "step": int(attrs["step"]), "schema_version": SCHEMA_VERSION,
                  "code_version": vmc.__version__}
    for v in file_attrs.values():
        _norm_attr(v)

    entries, groups = [], []
    for name, sub in tree.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"checkpoint tree names must be non-empty without '/': {name!r}")
        flat = _flatten(name, sub)
        if not (len(flat) == 1 and flat[0][0] == name):
            groups.append(name)
        for dname, leaf in flat:
            arr, impl = _to_numpy(dname, leaf)
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                raise NonFiniteError(f"refusing to checkpoint non-finite values in '{dname}'")
            entries.append((dname, arr, impl))
    entries.sort(key=lambda e: e[0])
    dup = [a[0] for a, b in zip(entries, entries[1:]) if a[0] == b[0]]
    if dup:
        raise ValueError(f"two leaves map to the same checkpoint name '{dup[0]}'")

    h = hashlib.sha256()
    for dname, arr, impl in entries:
        _hash_leaf(h, dname, arr, impl)
    _hash_attrs(h, file_attrs)

    fault = _FAULT
    if os.environ.get("VMC_FAULT_INJECT") == "checkpoint_abort":
        fault = "exit_halfway"
    kill_data, kill_write = _kill_due("checkpoint_data"), _kill_due("checkpoint_write")
    with locked_temp(path, keep_on=(_InjectedFault,)) as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            for g in groups:
                f.create_group(g)
            for i, (dname, arr, impl) in enumerate(entries):
                if (fault or kill_data) and i == len(entries) // 2:
                    f.flush()
                    if kill_data:
                        _kill_now()
                    if fault == "exit_halfway":
                        os._exit(17)
                    raise _InjectedFault(f"injected fault '{fault}' while saving {path}")
                d = f.create_dataset(dname, data=arr)
                if impl is not None:
                    d.attrs["prng_impl"] = impl
            for k, v in file_attrs.items():
                f.attrs[k] = v
            f.attrs["checksum"] = h.hexdigest()
        fsync_file(tmp)
        if kill_write:
            _kill_now()
        os.replace(tmp, path)
        fsync_dir(path.parent)


# ------------------------------------------------------------------------------ reading
def _open(path: pathlib.Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint {path}: {e}") from e


def _read_verified(f: h5py.File, path: pathlib.Path,
                   names: set[str] | None = None) -> dict[str, tuple[np.ndarray, str | None]]:
    """Verify the whole file's checksum; return ``{dataset name: (array, impl)}``.

    Only datasets under ``names`` are kept (all if None).
    """
    try:
        dsets: dict[str, h5py.Dataset] = {}
        f.visititems(lambda n, o: dsets.__setitem__(n, o) if isinstance(o, h5py.Dataset)
                     else None)
        raw_attrs = dict(f.attrs)
        h, out = hashlib.sha256(), {}
        for dname in sorted(dsets):
            arr = dsets[dname][()]
            arr = np.asarray(arr)
            impl = dsets[dname].attrs.get("prng_impl")
            impl = impl.decode() if isinstance(impl, bytes) else impl
            _hash_leaf(h, dname, arr, impl)
            if names is None or dname.split("/", 1)[0] in names:
                out[dname] = (arr, impl)
        _hash_attrs(h, raw_attrs)
    except CheckpointError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/... on damaged files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    stored = raw_attrs.get("checksum")
    stored = stored.decode() if isinstance(stored, bytes) else stored
    if stored != h.hexdigest():
        raise CheckpointError(f"checksum mismatch in checkpoint {path} (corrupt file)")
    version = raw_attrs.get("schema_version")
    if version is None or int(version) > SCHEMA_VERSION:
        raise CheckpointError(f"checkpoint {path} has schema version {version}; this vmc "
                              f"reads up to {SCHEMA_VERSION}")
    return out


def read_attrs(path) -> dict[str, Any]:
    """File attributes as Python values (without the checksum); does not verify data.

    Raises:
        FileNotFoundError: no file. CheckpointError: not a readable HDF5 file.
    """
    path = pathlib.Path(path)
    with _open(path) as f:
        return _py_attrs(dict(f.attrs))


def read_tree_raw(path, name: str) -> dict[str, np.ndarray]:
    """Leaves of one named tree without a template, checksum verified.

    Returns:
        ``{path below name: array}``, e.g. ``{"ferminet/layer_0/kernel": (m, n) array}``
        (HDF5-escaped components: '/' in a key is ``%2F``); a tree stored as a single
        array gives ``{"": array}``. PRNG keys come as their uint32 key data.

    Raises:
        CheckpointError: corrupt file or no tree ``name``.
    """
    path = pathlib.Path(path)
    with _open(path) as f:
        data = _read_verified(f, path, {name})
        if name not in f:
            raise CheckpointError(f"checkpoint {path} has no tree '{name}' "
                                  f"(has: {sorted(f.keys())})")
    return {k[len(name) + 1:]: a for k, (a, _) in data.items()}


def _rebuild_leaf(dname: str, tmpl: Any, arr: np.ndarray, impl: str | None) -> Any:
    if _is_prng_key(tmpl):
        want_shape = np.shape(jax.random.key_data(tmpl))
        want_dtype, want_impl = np.dtype(np.uint32), str(jax.random.key_impl(tmpl))
    else:
        want_shape = tuple(np.shape(tmpl))
        dt = getattr(tmpl, "dtype", None)
        want_dtype, want_impl = np.dtype(np.asarray(tmpl).dtype if dt is None else dt), None
    if arr.shape != want_shape or arr.dtype != want_dtype or impl != want_impl:
        raise CheckpointError(
            f"leaf '{dname}': checkpoint has {arr.dtype}{list(arr.shape)}"
            f"{' key ' + impl if impl else ''}, template wants {want_dtype}{list(want_shape)}"
            f"{' key ' + want_impl if want_impl else ''}")
    if want_impl is not None:
        return jax.random.wrap_key_data(arr, impl=want_impl)
    if isinstance(tmpl, jax.Array):
        # an uncommitted template (one device, nothing placed) gives an uncommitted leaf: a
        # committed one lowers with sharding annotations, a different program than the fresh
        # run's, so the resumed run would miss the compilation cache
        return jax.device_put(arr, tmpl.sharding) if tmpl.committed else jax.device_put(arr)
    if isinstance(tmpl, jax.ShapeDtypeStruct):
        return jax.device_put(arr)
    if isinstance(tmpl, np.ndarray):
        return arr
    if isinstance(tmpl, np.generic):
        return arr[()]
    return arr.item()  # Python scalar


def restore(path, template: Mapping[str, Any] | Callable[[dict], Mapping[str, Any]]
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the named trees of ``template`` from a checkpoint, bit-exact.

    Args:
        path: checkpoint file.
        template: ``{name: pytree}`` giving structure, shapes and dtypes (leaves may be
            arrays, scalars, ``jax.ShapeDtypeStruct`` or PRNG keys). May name a subset of
            the stored trees (e.g. only ``params`` for a warm start). Or a function of the
            file's attributes returning one (to read an older schema's layout).

    Returns:
        ``(trees, attrs)``: ``{name: pytree}`` with the template's treedefs (jax arrays
        where the template has jax arrays, on the template leaf's sharding), and the file
        attributes as Python values (``step``, ``schema_version``, ``code_version``, ...).

    Raises:
        FileNotFoundError: no file.
        CheckpointError: checksum mismatch, unreadable file, newer schema, missing tree,
            missing/extra leaves, or a leaf's shape/dtype differing (named).
    """
    path = pathlib.Path(path)
    with _open(path) as f:
        attrs = _py_attrs(dict(f.attrs))
        if callable(template):
            template = template(attrs)
        data = _read_verified(f, path, set(template))
        missing = [n for n in template if n not in f]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no tree(s) {missing}")
    trees = {}
    for name, tmpl in template.items():
        flat = _flatten(name, tmpl)
        want = {d for d, _ in flat}
        have = {d for d in data if d == name or d.startswith(name + "/")}
        if want != have:
            raise CheckpointError(
                f"tree '{name}' in {path} does not match the template: missing leaves "
                f"{sorted(want - have)[:5]}, unexpected {sorted(have - want)[:5]}")
        leaves = [_rebuild_leaf(d, t, *data[d]) for d, t in flat]
        treedef = jax.tree_util.tree_structure(tmpl)
        trees[name] = jax.tree_util.tree_unflatten(treedef, leaves)
    return trees, attrs


# -------------------------------------------------------------------------- directories
def checkpoint_path(directory, step: int) -> pathlib.Path:
    """``directory/ckpt_000500.h5``: step zero-padded to 6 digits (more if >= 1e6)."""
    if int(step) < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return pathlib.Path(directory) / f"ckpt_{int(step):06d}.h5"


def list_checkpoints(directory) -> list[pathlib.Path]:
    """Checkpoint files in ``directory`` sorted by numeric step (oldest first); [] if none."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_valid(directory, template: Mapping[str, Any] | Callable[[dict], Mapping[str, Any]]
                 | None = None, log: Callable[[str], Any] | None = None
                 ) -> pathlib.Path | None:
    """Newest checkpoint whose checksum verifies (and that fits ``template`` if given: a
    mapping or a function of the file's attributes, as for `restore`).

    Leftover temp files of a crash mid-save (``.ckpt_*.tmp``) are removed first when
    provably abandoned (a save running elsewhere keeps its file). Invalid checkpoints are
    skipped (not deleted) with one line ``warning: skipping invalid checkpoint FILE: why``
    to ``log`` (a run's logger: console and run.log), or a ``warnings.warn`` without one.

    Returns:
        The path, or None if there is no valid checkpoint.
    """
    d = pathlib.Path(directory)
    remove_stale_temps_in(d, _LIVE_GLOB)
    for p in reversed(list_checkpoints(d)):
        try:
            if template is None:
                with _open(p) as f:
                    _read_verified(f, p, set())
            else:
                restore(p, template)
            return p
        except CheckpointError as e:
            if log is not None:
                log(f"warning: skipping invalid checkpoint {p}: {e}")
            else:
                warnings.warn(f"skipping invalid checkpoint {p}: {e}", stacklevel=2)
    return None


def prune(directory, keep: int, protect=()) -> list[pathlib.Path]:
    """Delete all but the newest ``keep`` checkpoints (by numeric step); checkpoints at a
    step in ``protect`` are never deleted and do not count towards ``keep``.

    Returns:
        The deleted paths.

    Raises:
        ValueError: ``keep < 1``.
    """
    if int(keep) < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    protect = {int(s) for s in protect}
    paths = [p for p in list_checkpoints(directory)
             if int(_NAME_RE.match(p.name).group(1)) not in protect]
    old = paths[:-int(keep)]
    for p in old:
        p.unlink(missing_ok=True)
    return old
