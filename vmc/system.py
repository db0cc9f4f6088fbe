"""Molecules: atoms, nuclear charges, positions (bohr), spin and charge.

Ångström becomes bohr here, once, when the molecule is built; the rest of the code sees bohr.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from vmc.errors import InputError, did_you_mean

ANGSTROM_TO_BOHR = 1.8897261246  # CODATA 2018, as in MATH.md

ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
    "Ga Ge As Se Br Kr"
).split()
ATOMIC_NUMBER = {s: i + 1 for i, s in enumerate(ELEMENTS)}
UNITS = ("bohr", "angstrom")


@dataclasses.dataclass(frozen=True)
class Molecule:
    """A molecule with clamped nuclei.

    Attributes:
      symbols: element symbols, length n_atoms.
      charges: (n_atoms,) float nuclear charges Z.
      positions: (n_atoms, 3) float nuclear positions, bohr.
      charge: total charge (nuclear charge minus number of electrons).
      spin: 2S = n_up - n_down.
    """

    symbols: tuple[str, ...]
    charges: np.ndarray
    positions: np.ndarray
    charge: int = 0
    spin: int = 0

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def n_electrons(self) -> int:
        return int(round(float(np.sum(self.charges)))) - self.charge

    @property
    def n_up(self) -> int:
        return (self.n_electrons + self.spin) // 2

    @property
    def n_down(self) -> int:
        return (self.n_electrons - self.spin) // 2

    @property
    def nuclear_repulsion(self) -> float:
        """Σ_{I<J} Z_I Z_J / |R_I − R_J| in hartree."""
        e = 0.0
        for i in range(self.n_atoms):
            for j in range(i):
                e += self.charges[i] * self.charges[j] / np.linalg.norm(
                    self.positions[i] - self.positions[j])
        return float(e)

    def to_pyscf(self, basis: str = "cc-pvdz"):
        """Build a pyscf ``gto.Mole`` (unit bohr) for this molecule."""
        from pyscf import gto

        return gto.M(
            atom=[(s, tuple(map(float, p))) for s, p in zip(self.symbols, self.positions)],
            unit="Bohr", basis=basis, charge=self.charge, spin=self.spin, verbose=0)


def make_molecule(atoms: Sequence[dict], units: str = "bohr", charge: int = 0,
                  spin: int = 0) -> Molecule:
    """Build and validate a Molecule from the YAML form.

    Args:
      atoms: list of ``{symbol: str, position: [x, y, z]}`` (position in `units`).
      units: 'bohr' or 'angstrom'.
      charge: total charge, integer.
      spin: 2S = n_up − n_down, integer.

    Raises:
      InputError: unknown element or unit, malformed position, two nuclei at one point,
        no electrons left, spin that does not fit the electron count.
    """
    if units not in UNITS:
        raise InputError(f"molecule.units: unknown unit {units!r}; valid: bohr, angstrom"
                         + did_you_mean(units, UNITS))
    if not isinstance(atoms, (list, tuple)) or not atoms:
        raise InputError("molecule.atoms: need a non-empty list of {symbol: X, position: [x, y, z]}")
    for name, v in (("charge", charge), ("spin", spin)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"molecule.{name}: must be an integer, got {v!r}")
    symbols, positions = [], []
    for i, atom in enumerate(atoms):
        if not isinstance(atom, dict) or set(atom) != {"symbol", "position"}:
            raise InputError(f"molecule.atoms[{i}]: need exactly the keys symbol and position, "
                             f"got {atom!r}")
        sym = atom["symbol"]
        if sym not in ATOMIC_NUMBER:
            raise InputError(f"molecule.atoms[{i}].symbol: unknown element {sym!r}; valid: "
                             f"H to Kr" + did_you_mean(str(sym).capitalize(), ELEMENTS))
        pos = atom["position"]
        if (not isinstance(pos, (list, tuple)) or len(pos) != 3
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in pos)
                or not all(np.isfinite(pos))):
            raise InputError(f"molecule.atoms[{i}].position: need three finite numbers, got {pos!r}")
        symbols.append(sym)
        positions.append([float(c) for c in pos])
    positions = np.asarray(positions, dtype=np.float64)
    if units == "angstrom":
        positions = positions * ANGSTROM_TO_BOHR
    for i in range(len(symbols)):
        for j in range(i):
            if np.linalg.norm(positions[i] - positions[j]) < 1e-3:
                raise InputError(f"molecule.atoms: atoms {j} and {i} sit at the same point "
                                 f"{positions[i].tolist()} bohr; nuclei must be apart")
    charges = np.asarray([ATOMIC_NUMBER[s] for s in symbols], dtype=np.float64)
    n_el = int(charges.sum()) - charge
    if n_el <= 0:
        raise InputError(f"molecule.charge: {charge} leaves no electrons (total nuclear charge "
                         f"{int(charges.sum())}); valid: charge < {int(charges.sum())}")
    if abs(spin) > n_el:
        raise InputError(f"molecule.spin: |spin| = {abs(spin)} exceeds the {n_el} electrons; "
                         f"valid: -{n_el} <= spin <= {n_el}")
    if (n_el - spin) % 2:
        valid = "even" if n_el % 2 == 0 else "odd"
        raise InputError(f"molecule.spin: 2S = {spin} does not fit {n_el} electrons; valid: an "
                         f"{valid} value with |spin| <= {n_el}")
    return Molecule(tuple(symbols), charges, positions, charge, spin)
