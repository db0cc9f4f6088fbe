"""Wavefunction ansätze. The rest of the code sees only `Ansatz`:

    params = ansatz.init(key)
    sign, logabs = ansatz.log_psi(params, x)     # x: (n_electrons, 3) bohr, spin up first
    mats = ansatz.orbitals(params, x)            # orbital matrices (for pretraining)
    mats, (sign, logabs) = ansatz.orbitals_and_log_psi(params, x)   # both, one pass
    sign, logabs = ansatz.log_psi_at(params, x, atoms)   # nuclei (n_atoms, 3) bohr traced
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vmc.ansatz.common import psi_from_orbitals
from vmc.system import Molecule


class Ansatz(NamedTuple):
    """A wavefunction: `init(key) -> params`, `log_psi(params, x) -> (sign, logabs)`,
    `orbitals(params, x) -> list of (K, m, m)`; `module` is the flax module (or None);
    `orbitals_and_log_psi(params, x) -> (orbitals, (sign, logabs))` from one forward pass
    (pretraining's loss and its Metropolis moves share it);
    `log_psi_at(params, x, atoms)`: log_psi with the nuclear positions (n_atoms, 3) bohr as
    a traced input (equal to log_psi at the molecule's own positions), for ∂ log|ψ|/∂R_I."""
    init: Callable[[jax.Array], Any]
    log_psi: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
    orbitals: Callable[[Any, jax.Array], list]
    module: Any
    orbitals_and_log_psi: Optional[Callable] = None
    log_psi_at: Optional[Callable] = None


def unused_cusp_note(cfg, molecule: Molecule) -> Optional[str]:
    """A note when `ansatz.nuclear_cusp` is on but every atom has an ECP, where the cusp
    factor does nothing (it acts at all-electron atoms only); else None.

    Args:
      cfg: `vmc.config.AnsatzConfig`; molecule: the Molecule (its `ecp`, one entry per atom,
        None at all-electron atoms).
    """
    ecp = molecule.ecp                      # () when no atom has one
    if cfg.nuclear_cusp and cfg.name != "hf" and ecp and None not in ecp:
        return ("note: ansatz.nuclear_cusp has no effect here: every atom has an ECP, and the "
                "cusp factor acts at all-electron atoms only")
    return None


def make_ansatz(cfg, molecule: Molecule, dtype=jnp.float32, hf=None) -> Ansatz:
    """Build the ansatz named by `cfg.name` ('ferminet', 'psiformer', 'hf').

    Args:
      cfg: `vmc.config.AnsatzConfig`.
      molecule: the Molecule (bohr).
      dtype: parameter and activation dtype (float32 or float64).
      hf: a `vmc.hf.HartreeFock` result, needed for name 'hf'.
    Raises:
      ValueError: unknown ansatz name, or 'hf' without a Hartree–Fock result.
    """
    atoms = tuple(tuple(float(c) for c in p) for p in np.asarray(molecule.positions))
    charges = tuple(float(z) for z in molecule.charges)
    ecp = tuple(e is not None for e in getattr(molecule, "ecp", ())) \
        if getattr(molecule, "has_ecp", False) else (False,) * len(atoms)
    cusp = cfg.nuclear_cusp
    # smooth distance at ECP atoms (no cusp) and, with nuclear_cusp, at the others (whose
    # cusp NuclearCusp supplies); per-atom lengths a
    smooth = tuple(e or cusp for e in ecp) if any(ecp) or cusp else ()
    # cusp_length c: NuclearCusp's α_I = c/Z_I and the smoothing length a_I = c/(2 Z_I)
    # (the 1s orbital's scale; 1s/exp(u) ≈ exp(−Z r²/α) fits exp(−Z(√(r² + a²) − a)))
    c = float(cfg.cusp_length)
    length = (tuple(float(cfg.ecp_smoothing) if e else c / (2.0 * z)
                    for e, z in zip(ecp, charges)) if cusp else float(cfg.ecp_smoothing))
    cusp_charges = tuple(0.0 if e else z for e, z in zip(ecp, charges)) if cusp else ()
    cusp_lengths = tuple(1.0 if e else c / z for e, z in zip(ecp, charges)) if cusp else ()
    # cusp_envelope_z: envelope exponents at cusp atoms start at Z_I (the 1s decay)
    sigma = (tuple(1.0 if e else z for e, z in zip(ecp, charges))
             if cusp and cfg.cusp_envelope_z else ())
    x0 = jnp.zeros((molecule.n_electrons, 3), dtype)
    if cfg.name == "hf":
        if hf is None:
            raise ValueError("ansatz.name 'hf' needs a Hartree-Fock result")
        from vmc.hf import eval_orbitals, hf_log_psi, shell_atoms

        def orbitals_hf(params, x):
            up, down = eval_orbitals(hf, x)
            n_up = molecule.n_up
            return [m[None] for m in (up[:n_up], down[n_up:]) if m.shape[0] > 0]
        on_atom = shell_atoms(hf, molecule.positions)

        def log_psi_at_hf(params, x, atoms):
            return hf_log_psi(hf, x, jnp.asarray(atoms)[on_atom])
        return Ansatz(lambda key: {}, lambda params, x: hf_log_psi(hf, x), orbitals_hf, None,
                      log_psi_at=log_psi_at_hf)
    jastrow = cfg.name == "psiformer" if cfg.jastrow is None else cfg.jastrow
    if cfg.name == "ferminet":
        from vmc.ansatz.ferminet import FermiNet
        module = FermiNet(atoms=atoms, charges=charges, n_up=molecule.n_up,
                          n_down=molecule.n_down, hidden_one=tuple(cfg.hidden_one),
                          hidden_two=tuple(cfg.hidden_two), determinants=cfg.determinants,
                          full_det=cfg.full_det, envelope=cfg.envelope, jastrow=jastrow,
                          det_precision=cfg.det_precision, dtype=dtype, smooth_atoms=smooth,
                          smooth_length=length, cusp_charges=cusp_charges,
                          cusp_lengths=cusp_lengths, envelope_sigma=sigma,
                          cusp_form=cfg.cusp_form)
    elif cfg.name == "psiformer":
        from vmc.ansatz.psiformer import Psiformer
        module = Psiformer(atoms=atoms, charges=charges, n_up=molecule.n_up,
                           n_down=molecule.n_down, heads=cfg.heads, head_dim=cfg.head_dim,
                           layers=cfg.layers, layer_norm=cfg.layer_norm,
                           determinants=cfg.determinants, full_det=cfg.full_det,
                           envelope=cfg.envelope, jastrow=jastrow,
                           det_precision=cfg.det_precision, dtype=dtype, smooth_atoms=smooth,
                           smooth_length=length, cusp_charges=cusp_charges,
                           cusp_lengths=cusp_lengths, envelope_sigma=sigma,
                           cusp_form=cfg.cusp_form)
    else:
        raise ValueError(f"ansatz.name: unknown ansatz {cfg.name!r}; valid: ferminet, psiformer, hf")

    def init(key):
        return module.init(key, x0)

    def log_psi(params, x):
        return module.apply(params, x)

    def orbitals(params, x):
        return module.apply(params, x, method=module.orbitals)

    def orbitals_and_log_psi(params, x):
        def both(m, y):
            mats = m.orbitals(y)
            return mats, psi_from_orbitals(m, mats, y)
        return module.apply(params, x, method=both)

    def log_psi_at(params, x, atoms):
        return module.apply(params, x, atoms)

    return Ansatz(init, log_psi, orbitals, module, orbitals_and_log_psi, log_psi_at)


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))
