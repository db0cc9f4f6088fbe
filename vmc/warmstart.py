"""`--init-from RUN_DIR`: start from another run's parameters (a neighbouring geometry)."""

from __future__ import annotations

import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vmc import checkpoint as ckpt
from vmc.errors import InputError
from vmc.evaluate import resize_walkers


def warm_start(setup, state, run_dir: pathlib.Path, log: Callable = print):
    """Replace `state`'s parameters (and walkers where shapes fit) by those of the newest
    valid checkpoint in `run_dir`/checkpoints, or of the checkpoint file `run_dir` names
    (RUN/checkpoints/ckpt_NNNNNN.h5). The optimizer state starts fresh.

    Raises:
      InputError: no valid checkpoint, an unreadable checkpoint file, or parameters of
        another shape or dtype (another ansatz, a molecule with a different atom/electron
        count, another run.x64).
    """
    source = pathlib.Path(run_dir)
    if source.is_file():   # one checkpoint file, RUN/checkpoints/ckpt_NNNNNN.h5
        path, run_dir = source, source.parent.parent
    else:
        path = ckpt.latest_valid(source / "checkpoints", log=log)
        if path is None:
            raise InputError(f"--init-from {str(run_dir)!r}: no valid checkpoint")
    try:
        trees, attrs = ckpt.restore(path, {"params": state.params})
    except ckpt.CheckpointError as err:
        text = str(err)
        if text.startswith(("cannot open checkpoint", "cannot read checkpoint", "checksum")):
            raise InputError(f"--init-from {str(path)!r}: cannot read this checkpoint "
                             f"({text.splitlines()[0][:200]}); valid: an intact checkpoint, "
                             f"e.g. an older one of the same run") from None
        raise InputError(f"--init-from {str(source)!r}: parameters do not fit this ansatz "
                         f"and molecule{_differences(setup.cfg, pathlib.Path(run_dir), err)}"
                         ) from None
    from vmc.stages import current_layout
    params, _ = current_layout(setup, trees["params"], attrs, log)
    mcmc = state.mcmc
    walkers = ckpt.read_tree_raw(path, "mcmc")["walkers"]
    if walkers.shape[1:] == mcmc.walkers.shape[1:] and walkers.dtype == mcmc.walkers.dtype:
        walkers = jnp.asarray(resize_walkers(walkers, mcmc.walkers.shape[0]))
        logabs = jax.vmap(lambda x: setup.ansatz.log_psi(params, x)[1])(walkers)
        mcmc = mcmc.replace(walkers=walkers, logabs=logabs)
        log(f"warm start: parameters and walkers from {path}")
    else:
        log(f"warm start: parameters from {path} (walkers do not fit; fresh walkers)")
    return state._replace(params=params, opt_state=setup.optimizer.init(params), mcmc=mcmc)


def _differences(cfg, run_dir: pathlib.Path, err) -> str:
    """'; <settings that differ from run_dir's config.yaml>; valid: ...' for the error line
    (ansatz.*, the atoms, charge and spin), or the checkpoint's own message when none
    does."""
    import yaml
    from vmc.config import to_dict
    try:
        there = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return f" ({err})"
    here = to_dict(cfg)
    diffs = [f"ansatz.{k}: {v!r} there, {here['ansatz'].get(k)!r} here"
             for k, v in sorted((there.get("ansatz") or {}).items())
             if k in here["ansatz"] and v != here["ansatz"][k]]
    mol_there, mol_here = there.get("molecule") or {}, here["molecule"]
    for key in ("charge", "spin"):
        if mol_there.get(key, 0) != mol_here[key]:
            diffs.append(f"molecule.{key}: {mol_there.get(key, 0)!r} there, "
                         f"{mol_here[key]!r} here")
    symbols = [[a.get("symbol") for a in (m.get("atoms") or []) if isinstance(a, dict)]
               for m in (mol_there, mol_here)]
    if symbols[0] != symbols[1]:
        diffs.append(f"atoms {symbols[0]} there, {symbols[1]} here")
    from vmc.config import hamiltonian_label
    try:
        ham = [hamiltonian_label((t.get("hamiltonian") or {}).get("ecp"), syms)
               for t, syms in zip((there, here), symbols)]
    except InputError:
        ham = [None, None]
    if ham[0] != ham[1]:   # an ECP changes Z_eff and the envelope's shapes
        diffs.append(f"hamiltonian.ecp: {ham[0]} there, {ham[1]} here")
    x64 = [bool((t.get("run") or {}).get("x64", False)) for t in (there, here)]
    if x64[0] != x64[1]:   # float32 parameters cannot seed a float64 run, or the reverse
        diffs.append(f"run.x64: {x64[0]} there, {x64[1]} here")
    if not diffs:
        return (f" ({err}); valid: a run of the same network settings, atoms, charge, spin "
                f"and hamiltonian.ecp")
    return (f": {'; '.join(diffs[:4])}; valid: the source run's network settings, atoms, "
            f"charge, spin, hamiltonian.ecp and run.x64 (only positions may differ)")
