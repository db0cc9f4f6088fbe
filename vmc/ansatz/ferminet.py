"""FermiNet (Pfau, Spencer, Matthews, Foulkes, Phys. Rev. Research 2, 033429, 2020).

Written for ONE configuration `x: (n_electrons, 3)` bohr, spin-up electrons first; the rest of
the code vmaps over walkers.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmc.ansatz.common import (Envelope, Jastrow, NuclearCusp, SharedRowsDense, cusp_rows,
                               electron_features, orbital_matrices, psi_from_orbitals,
                               spin_blocks)


class FermiNetLayer(nn.Module):
    """One interaction layer: permutation-equivariant one- and two-electron updates.

    h1: (n, d1) one-electron stream; h2: (n, n, d2) two-electron stream.
    The one-electron input concatenates h1_i, the spin-up and spin-down means over j of h2_ij,
    and the spin-up and spin-down means of h1 (Pfau et al. 2020, eq. 5; in this order, the
    per-electron blocks first, since checkpoint schema 2: `SharedRowsDense`).
    """
    n_up: int
    width_one: int
    width_two: int | None  # None: last layer, no two-electron update
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h1, h2):
        n = h1.shape[0]
        local, shared = [h1], []
        for sl in spin_blocks(self.n_up, n):
            if sl.stop > sl.start:
                local.append(jnp.mean(h2[:, sl], axis=1))
                shared.append(jnp.mean(h1[sl], axis=0))
        new1 = jnp.tanh(SharedRowsDense(self.width_one, dtype=self.dtype,
                                        param_dtype=self.dtype, name="one")(local, shared))
        h1 = new1 + h1 if new1.shape == h1.shape else new1
        if self.width_two is not None:
            new2 = jnp.tanh(nn.Dense(self.width_two, dtype=self.dtype, param_dtype=self.dtype,
                                     name="two")(h2))
            h2 = new2 + h2 if new2.shape == h2.shape else new2
        return h1, h2


class FermiNet(nn.Module):
    """FermiNet wavefunction log|ψ|.

    Attributes:
      atoms: (n_atoms, 3) nuclear positions, bohr (as nested tuples).
      charges: (n_atoms,) nuclear charges.
      n_up, n_down: electrons per spin; electrons 0..n_up-1 are spin up.
      hidden_one, hidden_two: stream widths per layer (equal lengths).
      determinants: K, the number of determinants.
      full_det: one n×n determinant per k (True) or det(up block)·det(down block) (False).
      envelope: 'isotropic' or 'full' (anisotropic) exponential envelopes.
      jastrow: multiply by Psiformer's electron–electron Jastrow factor.
    """
    atoms: tuple
    charges: tuple
    n_up: int
    n_down: int
    hidden_one: Sequence[int] = (32, 32, 32)
    hidden_two: Sequence[int] = (8, 8, 8)
    determinants: int = 8
    full_det: bool = True
    envelope: str = "isotropic"
    jastrow: bool = False
    det_precision: str = "float64"
    dtype: jnp.dtype = jnp.float32
    smooth_atoms: tuple = ()   # per atom: True at ECP atoms (no cusp, common.smooth_distance)
    smooth_length: float | tuple = 1.0   # its length a, bohr, one or per atom
    cusp_charges: tuple = ()   # per atom Z_I where NuclearCusp imposes Kato's cusp, else 0
    cusp_lengths: tuple = ()   # per atom NuclearCusp's initial α_I, bohr
    cusp_form: str = "pade"    # NuclearCusp's form: 'pade' or 'tanh'
    envelope_sigma: tuple = ()   # per atom initial envelope exponent (() = 1)

    def setup(self):
        if len(self.hidden_one) != len(self.hidden_two):
            raise ValueError("hidden_one and hidden_two need the same number of layers")
        n_layers = len(self.hidden_one)
        self.layers = [FermiNetLayer(self.n_up, w1, self.hidden_two[i] if i < n_layers - 1 else None,
                                     self.dtype, name=f"layer_{i}")
                       for i, w1 in enumerate(self.hidden_one)]
        n = self.n_up + self.n_down
        self.n_out = [n if self.full_det else ns for ns in (self.n_up, self.n_down)]
        self.orbital_dense = [nn.Dense(self.determinants * n_out, dtype=self.dtype,
                                       param_dtype=self.dtype, name=f"orbital_{s}")
                              for s, n_out in zip(("up", "down"), self.n_out)]
        self.envelopes = [Envelope(len(self.atoms), self.determinants * n_out, self.envelope,
                                   self.dtype, self.smooth_atoms, self.smooth_length,
                                   self.envelope_sigma, name=f"envelope_{s}")
                          for s, n_out in zip(("up", "down"), self.n_out)]
        if self.jastrow:
            self.jastrow_factor = Jastrow(self.n_up, self.dtype)
        if any(self.cusp_charges):
            self.nuclear_cusp = NuclearCusp(self.cusp_charges, self.cusp_lengths,
                                            self.dtype, self.cusp_form)

    def orbitals(self, x, atoms=None):
        """Orbital matrices.

        Args:
          x: (n_electrons, 3) electron positions, bohr.
          atoms: optional (n_atoms, 3) nuclear positions, bohr, as a traced input (for
            ∂ log|ψ|/∂R_I, the Pulay force term); None: the module's static `atoms`.
        Returns:
          full_det: [(K, n, n)]; else [(K, n_up, n_up), (K, n_down, n_down)] (empty blocks
          omitted). Row i is electron i (within its spin block).
        """
        atoms = jnp.asarray(self.atoms if atoms is None else atoms, self.dtype)
        x = x.astype(self.dtype)
        h1, h2, ae, r_ae = electron_features(x, atoms, self.smooth_atoms,
                                             self.smooth_length)
        for layer in self.layers:
            h1, h2 = layer(h1, h2)
        return orbital_matrices(h1, ae, r_ae, self.n_up, self.orbital_dense, self.envelopes,
                                self.determinants, self.n_out, self.full_det,
                                cusp_rows(self, ae))

    def __call__(self, x, atoms=None):
        """(sign, log|ψ|) of one configuration x: (n_electrons, 3) bohr; `atoms` as in
        `orbitals` (None: the static nuclear positions)."""
        return psi_from_orbitals(self, self.orbitals(x, atoms), x)


def schema1_row_order(module: FermiNet, layer: int) -> list[int]:
    """Rows of `layer_{layer}/one/kernel` as checkpoint schema 1 stored them, in today's order.

    Schema 1 (vmc before `SharedRowsDense`) ordered the one-electron input
    [h1_i, ⟨h1⟩_up, ⟨h2_i·⟩_up, ⟨h1⟩_down, ⟨h2_i·⟩_down]; schema 2 orders it
    [h1_i, ⟨h2_i·⟩_up, ⟨h2_i·⟩_down, ⟨h1⟩_up, ⟨h1⟩_down] (empty spins omitted in both).
    Returns the permutation `perm` with new_kernel = old_kernel[perm].
    """
    d1 = 4 * len(module.atoms) if layer == 0 else module.hidden_one[layer - 1]
    d2 = 4 if layer == 0 else module.hidden_two[layer - 1]
    spins = [ns for ns in (module.n_up, module.n_down) if ns > 0]
    old, at = {}, d1                  # old block start of (kind, spin)
    for s in range(len(spins)):
        old[("h1", s)] = at
        old[("h2", s)] = at + d1
        at += d1 + d2
    perm = list(range(d1))
    for s in range(len(spins)):
        perm += range(old[("h2", s)], old[("h2", s)] + d2)
    for s in range(len(spins)):
        perm += range(old[("h1", s)], old[("h1", s)] + d1)
    return perm


def params_from_schema1(module: FermiNet, params):
    """FermiNet parameters of a schema-1 checkpoint in today's layout (the same ψ).

    Args:
      module: the `FermiNet` the parameters belong to; params: its parameter pytree
        ({'params': {'layer_i': {'one': {'kernel', 'bias'}, ...}, ...}}).
    Returns:
      the pytree with each `layer_i/one/kernel`'s rows reordered (`schema1_row_order`).
    """
    inner = dict(params["params"])
    for i in range(len(module.hidden_one)):
        name = f"layer_{i}"
        layer = dict(inner[name])
        one = dict(layer["one"])
        one["kernel"] = jnp.asarray(one["kernel"])[jnp.asarray(schema1_row_order(module, i))]
        layer["one"] = one
        inner[name] = layer
    return {**params, "params": inner}
