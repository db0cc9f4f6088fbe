"""Input checks of `vmc run` / `vmc check` that run before a run directory is touched.

Everything that can fail on input is checked here, before `vmc run` creates or writes
anything: the run directory itself (a run already there, `--resume` without one), the
settings a resumed run may not change, solver and ansatz compatibility, walker counts that
the devices cannot split, `--init-from`, and the Hartree–Fock calculation (basis name, SCF
failures), whose result the run then reuses. `DirectoryGuard` is the safety net behind
these checks: if bad input still shows up once the directory exists, it leaves the
directory as it found it.

Every failure is an `InputError`: one line naming the field and what would be valid, which
the CLI prints as ``error: ...`` with exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import warnings
from typing import Any, Callable, Optional

from vmc.config import Config, dump_yaml
from vmc import parallel
from vmc.errors import InputError

# Solvers that need the ansatz's flax module (KFAC captures its Dense layers).
NEEDS_MODULE = ("kfac", "kfac-cg")
# Ansätze without trainable parameters: `vmc run` evaluates them without training.
UNTRAINED = ("hf",)

# Settings that may change when a run is resumed; every other resolved setting must match
# the run's config.yaml (a different molecule, network, solver or seed is a different run).
RESUMABLE = ("name", "molecule.reference.", "optim.steps", "sampler.walkers", "eval.",
             "run.log_every", "run.progress", "run.checkpoint_every", "run.checkpoint_minutes",
             "run.keep_checkpoints", "run.keep_steps", "run.max_minutes", "run.max_bad_steps",
             "run.max_bad_walkers", "run.heartbeat_seconds", "run.compile_cache",
             "hamiltonian.chunk_walkers", "hamiltonian.ecp_rule")

_RUN_FILES = ("config.yaml", "train.h5", "checkpoints", "summary.json")


def holds_run(run_dir: pathlib.Path) -> bool:
    """Whether `run_dir` already holds (part of) a run."""
    return any((pathlib.Path(run_dir) / n).exists() for n in _RUN_FILES)


def trains(cfg: Config) -> bool:
    """Whether `vmc run` optimizes this configuration (the 'hf' ansatz has no parameters:
    it goes from burn-in straight to the evaluation)."""
    return cfg.ansatz.name not in UNTRAINED


def needs_hartree_fock(cfg: Config, *, resume: bool, init_from) -> bool:
    """Whether the run computes Hartree–Fock: the 'hf' ansatz always, pretraining of a
    fresh run (not resumed, not warm-started) when `pretrain.steps` > 0."""
    if cfg.ansatz.name == "hf":
        return True
    return cfg.pretrain.steps > 0 and not resume and init_from is None


# Settings whose value may be a mapping but that compare as one value: a change between an
# ECP name and a mapping (or of a mapping's keys) changes the Hamiltonian.
_LEAF_MAPPINGS = ("hamiltonian.ecp",)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict) and prefix[:-1] not in _LEAF_MAPPINGS:
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _stored_and_new(cfg: Config, run_dir: pathlib.Path):
    """(run_dir's config.yaml, the resolved `cfg`), both flattened to {'section.key': value};
    ({}, {}) when there is no config.yaml."""
    import yaml
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        return {}, {}
    try:
        from vmc.config_parse import load_yaml
        stored = _flatten(load_yaml(stored_path.read_text(), repr(str(stored_path))) or {})
    except yaml.YAMLError:
        raise InputError(f"--resume: {str(stored_path)!r} is not valid YAML") from None
    return stored, _flatten(yaml.safe_load(dump_yaml(cfg)))


def changed_settings(cfg: Config, run_dir: pathlib.Path) -> list[str]:
    """Every resolved setting of `cfg` that differs from run_dir's config.yaml, as
    'key: old -> new' (any of them may change while the run has no checkpoint yet)."""
    return _changes(*_stored_and_new(cfg, run_dir))


def _changes(stored: dict, new: dict) -> list[str]:
    return [f"{k}: {stored[k]!r} -> {new[k]!r}" for k in new
            if k in stored and new[k] != stored[k]]


def shown_changes(changed: list[str], first: int = 6) -> str:
    """The first `first` of `changed_settings`' lines joined for one log line."""
    more = len(changed) - first
    return "; ".join(changed[:first]) + (f" (and {more} more)" if more > 0 else "")


def check_resume_config(cfg: Config, run_dir: pathlib.Path) -> list[str]:
    """Refuse to resume `run_dir` with settings other than those in RESUMABLE changed (call
    once the run has a checkpoint: before the first one, a resume starts again from step 0
    and any setting may change, `vmc.run.train_run`).

    Returns:
      the RESUMABLE settings that do change, as 'key: old -> new' (for the log).
    Raises:
      InputError: naming the first differing settings, their stored and new values.
    """
    stored_path = run_dir / "config.yaml"
    stored, new = _stored_and_new(cfg, run_dir)
    diffs = [k for k in new if k in stored and new[k] != stored[k]
             and not any(k == a or (a.endswith(".") and k.startswith(a)) for a in RESUMABLE)]
    if diffs:
        shown = "; ".join(f"{k}: {stored[k]!r} there, {new[k]!r} now" for k in diffs[:3])
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise InputError(f"--resume: settings differ from {str(stored_path)!r}: {shown}{more}; "
                         f"valid changes on resume: optim.steps, sampler.walkers, eval.*, "
                         f"run.* (not seed, x64), molecule.reference.*, name, "
                         f"hamiltonian.chunk_walkers, hamiltonian.ecp_rule; any setting may "
                         f"change only before a run's first checkpoint (a resume then starts "
                         f"again from step 0), and this run has one")
    return _changes(stored, new)


def check_writable(run_dir: pathlib.Path, field: str) -> None:
    """An existing run directory must take new files (a read-only file system or missing
    permissions are caught here, before any computation, not at the first write).

    Raises:
      InputError: the directory exists and cannot be written.
    """
    run_dir = pathlib.Path(run_dir)
    if run_dir.is_dir() and not os.access(run_dir, os.W_OK | os.X_OK):
        raise InputError(f"{field} {str(run_dir)!r}: cannot write there (read-only or no "
                         f"permission); valid: a folder you can write")


def check_run_dir(run_dir: pathlib.Path, *, resume: bool) -> None:
    """The run directory can take this run (nothing is created).

    Raises:
      InputError: `--out` is a file, already holds a run (without `resume`), holds no run
        (with `resume`), or lies under a file.
    """
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {str(run_dir)!r}: exists and is not a directory")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"--out {str(run_dir)!r}: {str(parent)!r} is a file; valid: a "
                             f"path whose parents are directories")
    check_writable(run_dir, "--out")
    if holds_run(run_dir) and not resume:
        raise InputError(f"--out {str(run_dir)!r}: already holds a run; use --resume to "
                         f"continue it or choose another --out")
    if resume and not holds_run(run_dir):
        raise InputError(f"--resume: {str(run_dir)!r} holds no run to resume")


def check_compatible(cfg: Config) -> None:
    """Solver and ansatz fit together.

    Raises:
      InputError: a solver that needs a flax network (kfac, kfac-cg) with the 'hf' ansatz.
    """
    from vmc.config import SOLVERS
    if cfg.ansatz.name == "hf" and cfg.optim.solver in NEEDS_MODULE:
        valid = ", ".join(s for s in SOLVERS if s not in NEEDS_MODULE)
        raise InputError(f"optim.solver: {cfg.optim.solver!r} needs a flax network "
                         f"(ferminet, psiformer) and ansatz.name 'hf' has none (nor anything "
                         f"to train); valid with hf: {valid}")


def check_devices(walkers: dict, n_devices: Optional[int] = None) -> None:
    """Walker counts split evenly over the devices (walkers are sharded along their first
    axis, vmc.parallel).

    Args:
      walkers: {field name: walker count}, e.g. {"sampler.walkers": 256}; None counts are
        skipped.
      n_devices: the device count; None asks JAX (`jax.device_count()`).
    Raises:
      InputError: a count not divisible by the device count, naming its field.
    """
    if n_devices is None:
        import jax
        n_devices = jax.device_count()
    for field, n in walkers.items():
        if n is not None and n % n_devices:
            lower = n - n % n_devices
            options = ", ".join(str(v) for v in (lower, lower + n_devices) if v >= 2)
            raise InputError(f"{field}: {n} walkers do not split over the {n_devices} devices; "
                             f"valid: a multiple of {n_devices}, e.g. {options}")


def hartree_fock(cfg: Config, log: Callable = print) -> Any:
    """Run Hartree–Fock (`pretrain.basis`, `pretrain.method`) for the config's molecule.

    Returns:
      The `vmc.hf.HartreeFock` result.
    Raises:
      InputError: unknown basis or method, 'rhf' for an open shell, an SCF that does not
        converge or cannot place the electrons (e.g. a basis too small for the spin).
    """
    import time
    from vmc.hf import run_hf
    molecule = cfg.build_molecule()
    pre = cfg.pretrain
    t0 = time.time()
    try:
        with warnings.catch_warnings():   # PySCF warns on stderr beside our one error line
            warnings.simplefilter("ignore")
            hf = run_hf(molecule, pre.basis, pre.method)
    except InputError:
        raise
    except (RuntimeError, ValueError, ArithmeticError) as err:   # SCFError, PySCF's own
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        skip = "" if cfg.ansatz.name == "hf" else ", or pretrain.steps: 0 (no pretraining)"
        raise InputError(f"pretrain.basis: Hartree-Fock ({pre.method}, basis {pre.basis!r}) "
                         f"failed for charge {molecule.charge}, spin {molecule.spin}: {first}; "
                         f"valid: a larger basis (e.g. cc-pvdz, cc-pvtz), another "
                         f"pretrain.method (rhf, rohf, uhf){skip}") from None
    log(f"hartree-fock: {hf.method.upper()}/{hf.basis} energy {hf.energy:.6f} Ha "
        f"({time.time() - t0:.1f} s)")
    return hf


@dataclasses.dataclass(frozen=True)
class Checked:
    """What the pre-checks found: the Hartree–Fock result (None when the run needs none) and,
    for pretraining, its one-line summary that pretraining logs when it starts."""
    hf: Any = None
    note: Optional[str] = None


def check_run_input(cfg: Config, *, resume: bool, init_from: Optional[pathlib.Path] = None,
                    log: Callable = print) -> Checked:
    """Every input check of a run that does not need the run directory's contents.

    Runs before anything is written: solver/ansatz compatibility, device counts,
    `--init-from` (a run directory with checkpoints; not with the 'hf' ansatz), and
    Hartree–Fock when the run needs it (`needs_hartree_fock`).

    Raises:
      InputError: the first problem found.
    """
    check_compatible(cfg)
    check_devices({"sampler.walkers": cfg.sampler.walkers, "eval.walkers": cfg.eval.walkers})
    from vmc.parallel import cpu_devices_warning
    line = cpu_devices_warning()
    if line:
        log(line)
    if init_from is not None:
        source = pathlib.Path(init_from)
        is_file = (source.is_file() and source.suffix == ".h5"
                   and source.parent.name == "checkpoints")
        if not ((source / "checkpoints").is_dir() or is_file):
            raise InputError(f"--init-from {str(init_from)!r}: not a run directory with "
                             f"checkpoints; valid: RUN_DIR or "
                             f"RUN_DIR/checkpoints/ckpt_NNNNNN.h5")
        if not trains(cfg):
            raise InputError(f"--init-from: ansatz.name {cfg.ansatz.name!r} has no parameters "
                             f"to warm-start; valid: ferminet, psiformer (or drop --init-from)")
    hf = note = None
    if needs_hartree_fock(cfg, resume=resume, init_from=init_from):
        lines = []
        hf = hartree_fock(cfg, lines.append)
        if cfg.ansatz.name == "hf":
            log(lines[0])
        else:   # "pretrain: RHF/cc-pvdz energy ...", logged as pretraining starts
            note = "pretrain: " + lines[0].split(": ", 1)[1]
    return Checked(hf=hf, note=note)


class DirectoryGuard:
    """Leave a run directory as it was found if bad input (`InputError`) stops the run.

    On entry it records whether the directory existed, its files and folders and the bytes
    of its config.yaml. If an `InputError` leaves the `with` block, everything created since
    is removed (the directory itself and any parents this call made, if it did not exist)
    and config.yaml is restored. Other exceptions leave the files for inspection, and so
    does `RunDirBusy` (another process is using the directory).
    """

    def __init__(self, run_dir: pathlib.Path):
        self.run_dir = pathlib.Path(run_dir)

    def __enter__(self):
        d = self.run_dir.absolute()
        self._top = None   # the highest folder that does not exist yet
        for p in (d, *d.parents):
            if p.exists():
                break
            self._top = p
        self._before = set(d.rglob("*")) if self._top is None else set()
        cfg = d / "config.yaml"
        self._config = cfg.read_bytes() if self._top is None and cfg.is_file() else None
        return self

    def __exit__(self, exc_type, exc, tb):
        from vmc.rundir_lock import RunDirBusy
        if exc_type is None or not issubclass(exc_type, InputError):
            return False
        if issubclass(exc_type, RunDirBusy):   # the directory is another process's
            return False
        if not parallel.is_writer():   # process 0 owns the run directory
            return False
        d = self.run_dir.absolute()
        if self._top is not None:
            shutil.rmtree(self._top, ignore_errors=True)
            return False
        for p in sorted(set(d.rglob("*")) - self._before, key=lambda q: len(q.parts)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if self._config is not None:
            (d / "config.yaml").write_bytes(self._config)
        return False
