"""`vmc check`: the resolved config, spin assignment, geometry in bohr, E_nn, the
Hartree–Fock energy, the network, parameter count and memory estimate."""

from __future__ import annotations

import jax
import numpy as np

from vmc.config import Config, dump_yaml


def memory_estimate_mb(cfg: Config, n_params: int, n_electrons: int) -> float:
    """Rough peak memory of one training step, MB (largest arrays only).

    Counts the parameters and optimizer state (×4), the per-walker Jacobian (sample, dense,
    spring: n_w × p), the p × p matrix (dense), nystrom-cg's and kfac-cg's p × ℓ sketch
    basis (float64; nystrom-cg keeps it in the optimizer state), the n_w × n_w Gram matrix,
    and forward-Laplacian activations (n_w × n_e² × width × 3 n_e tangents).
    """
    item = 8 if cfg.run.x64 else 4
    w = cfg.sampler.walkers
    total = 4 * n_params * item
    if cfg.optim.solver in ("sample", "dense", "spring"):
        total += w * n_params * (item + 8)
        total += w * w * 8
    if cfg.optim.solver == "dense":
        total += n_params * n_params * 8
    if cfg.optim.solver in ("nystrom-cg", "kfac-cg"):
        total += 3 * n_params * min(cfg.optim.nystrom_rank, n_params) * 8   # U, Ω, F·Ω
    width = max(max(cfg.ansatz.hidden_one), 4 * max(cfg.ansatz.hidden_two))
    total += w * n_electrons ** 2 * width * (3 * n_electrons + 2) * item
    return total / 2 ** 20


def device_memory_mb() -> float | None:
    """Memory of the first device, MB: an accelerator's `bytes_limit`, on a CPU the
    machine's physical memory; None when neither is known."""
    import os
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:   # noqa: BLE001 (backends without memory_stats)
        stats = {}
    if stats.get("bytes_limit"):
        return stats["bytes_limit"] / 2 ** 20
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20
    except (ValueError, OSError, AttributeError):
        return None


def network_size(cfg: Config) -> str:
    """The resolved network in one line, e.g. 'ferminet: one-electron widths [32, 32, 32],
    two-electron [8, 8, 8], 8 full determinants, isotropic envelope, no Jastrow'."""
    a = cfg.ansatz
    tail = (f"{a.determinants} {'full' if a.full_det else 'block-diagonal'} determinants, "
            f"{a.envelope} envelope, {'Jastrow' if a.jastrow else 'no Jastrow'}")
    if a.name == "ferminet":
        return (f"ferminet: one-electron widths {list(a.hidden_one)}, two-electron "
                f"{list(a.hidden_two)}, {tail}")
    if a.name == "psiformer":
        return (f"psiformer: {a.layers} layers x {a.heads} heads x {a.head_dim}, "
                f"{'layer norm, ' if a.layer_norm else ''}{tail}")
    return f"{a.name}: the Hartree-Fock determinant in {cfg.pretrain.basis}, no parameters"


def _chunk_text(cfg: Config, chunk) -> str:
    """How many walkers per device the local energy takes at once, and why."""
    if cfg.hamiltonian.chunk_walkers is not None:
        return f"{chunk} walkers per device at a time (hamiltonian.chunk_walkers)"
    if chunk is None:
        from vmc.hamiltonian import CPU_CHUNK_FROM
        return (f"all walkers at once (hamiltonian.chunk_walkers null: chunks only for a "
                f"FermiNet on a CPU from {CPU_CHUNK_FROM} electrons on)")
    return (f"{chunk} walkers per device at a time (hamiltonian.chunk_walkers null: on a CPU "
            f"a FermiNet's Jacobians stay in cache, vmc.hamiltonian.resolve_chunk)")


def describe(cfg: Config, hf=None, notes=()) -> str:
    """Text printed by `vmc check` (the config is already validated, vmc.precheck).

    Args:
      hf: the Hartree–Fock result (`vmc.hf.HartreeFock`), printed; None prints none.
      notes: lines printed after the device line.
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
        core = mol.n_core[i] if mol.n_core else 0
        ecp = (f" (ECP {mol.ecp[i]}: Z_eff={int(mol.charges[i])}, {core} core electrons "
               f"removed)" if core or (mol.ecp and mol.ecp[i]) else "")
        lines.append(f"  atom {i} {sym:2s} Z={int(mol.atomic_numbers[i])}{ecp}: "
                     f"{int(np.sum(up == i))} up, {int(np.sum(down == i))} down")
    lines += ["", "# geometry (bohr)"]
    for i, sym in enumerate(mol.symbols):
        x, y, z = (float(v) for v in mol.positions[i])
        lines.append(f"  {i} {sym:2s} {x:12.6f} {y:12.6f} {z:12.6f}")
    lines.append(f"nuclear repulsion E_nn: {mol.nuclear_repulsion:.6f} Ha")
    if hf is not None:
        lines.append(f"hartree-fock: {hf.method.upper()}/{hf.basis} energy {hf.energy:.6f} Ha")
    mb = memory_estimate_mb(cfg, n_params, mol.n_electrons)
    lines += ["", f"network: {network_size(cfg)}", f"parameters: {n_params}",
              f"estimated memory per step: {mb:.0f} MB" if mb >= 1 else
              "estimated memory per step: < 1 MB",
              f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}",
              f"local energy: {_chunk_text(cfg, setup.chunk_walkers)}"]
    device_mb = device_memory_mb()
    if device_mb is not None and mb > 0.9 * device_mb:
        lines.append(f"warning: the estimated memory per step, {mb:.0f} MB, exceeds 90 % of "
                     f"this device's {device_mb:.0f} MB: use fewer sampler.walkers, a "
                     f"matrix-free solver (cg, nystrom-cg, kfac) instead of dense, sample or "
                     f"spring, or walker chunks (hamiltonian.chunk_walkers, "
                     f"optim.jacobian_chunk; not in this estimate)")
    if not trains(cfg):
        lines.append(f"training: none (ansatz {cfg.ansatz.name} has no parameters; "
                     f"burn-in, then {cfg.eval.steps} evaluation steps)")
    from vmc.ansatz import unused_cusp_note
    cusp_note = unused_cusp_note(cfg.ansatz, mol)
    return "\n".join(lines + ([cusp_note] if cusp_note else []) + list(notes))
