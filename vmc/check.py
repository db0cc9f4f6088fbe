"""`vmc check`: the resolved config, spin assignment, parameter count and memory estimate."""

from __future__ import annotations

import jax
import numpy as np

from vmc.config import Config, dump_yaml


def memory_estimate_mb(cfg: Config, n_params: int, n_electrons: int) -> float:
    """Rough peak memory of one training step, MB (largest arrays only).

    Counts the parameters and optimizer state (×4), the per-walker Jacobian (sample, dense,
    spring: n_w × p), the p × p matrix (dense), nystrom-cg's p × ℓ sketch basis (float64, in
    the optimizer state), the n_w × n_w Gram matrix, and forward-
    Laplacian activations (n_w × n_e² × width × 3 n_e tangents).
    """
    item = 8 if cfg.run.x64 else 4
    w = cfg.sampler.walkers
    total = 4 * n_params * item
    if cfg.optim.solver in ("sample", "dense", "spring"):
        total += w * n_params * (item + 8)
        total += w * w * 8
    if cfg.optim.solver == "dense":
        total += n_params * n_params * 8
    if cfg.optim.solver == "nystrom-cg":
        total += 3 * n_params * min(cfg.optim.nystrom_rank, n_params) * 8   # U, Ω, F·Ω
    width = max(max(cfg.ansatz.hidden_one), 4 * max(cfg.ansatz.hidden_two))
    total += w * n_electrons ** 2 * width * (3 * n_electrons + 2) * item
    return total / 2 ** 20


def describe(cfg: Config, hf=None, notes=()) -> str:
    """Text printed by `vmc check` (the config is already validated, vmc.precheck).

    Args:
      hf: the Hartree–Fock result when the run needs one (reused, not recomputed).
      notes: lines printed after the device line (e.g. the Hartree–Fock energy).
    """
    from vmc.precheck import trains
    from vmc.sampler import electron_assignment
    from vmc.train import build
    setup = build(cfg, hf=hf)
    mol = setup.molecule
    params = jax.eval_shape(setup.ansatz.init, jax.random.PRNGKey(0))
    n_params = int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
    up, down = electron_assignment(mol)
    lines = ["# resolved config", dump_yaml(cfg).rstrip(), "", "# electrons",
             f"n_electrons: {mol.n_electrons}  n_up: {mol.n_up}  n_down: {mol.n_down}"]
    for i, sym in enumerate(mol.symbols):
        lines.append(f"  atom {i} {sym:2s} Z={int(mol.charges[i])}: "
                     f"{int(np.sum(up == i))} up, {int(np.sum(down == i))} down")
    lines += ["", f"parameters: {n_params}",
              f"estimated memory per step: {memory_estimate_mb(cfg, n_params, mol.n_electrons):.0f} MB",
              f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}"]
    if not trains(cfg):
        lines.append(f"training: none (ansatz {cfg.ansatz.name} has no parameters; "
                     f"burn-in, then {cfg.eval.steps} evaluation steps)")
    return "\n".join(lines + list(notes))
