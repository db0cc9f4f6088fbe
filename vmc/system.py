"""Molecules: atoms, nuclear charges, positions (bohr), spin and charge.

Ångström becomes bohr here, once, when the molecule is built; the rest of the code sees bohr.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

from vmc.errors import InputError, did_you_mean

ANGSTROM_TO_BOHR = 1.8897261246  # CODATA 2018, as in MATH.md

ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
    "Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr "
    "Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn"
).split()
ALL_ELECTRON_MAX_Z = 36   # all-electron runs stop at Kr; heavier atoms need an ECP
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
      ecp: per atom the ECP name (e.g. 'ccecp') or None (all-electron); with an ECP,
        `charges` holds Z_eff = Z − n_core and the core electrons are not counted anywhere.
      n_core: per atom the core electrons the ECP removes (0 without one).
    """

    symbols: tuple[str, ...]
    charges: np.ndarray
    positions: np.ndarray
    charge: int = 0
    spin: int = 0
    ecp: tuple = ()
    n_core: tuple = ()

    @property
    def has_ecp(self) -> bool:
        return any(e is not None for e in self.ecp)

    @property
    def atomic_numbers(self) -> np.ndarray:
        """(n_atoms,) Z of each atom (the charges plus the removed core electrons)."""
        core = np.asarray(self.n_core or (0,) * self.n_atoms, np.float64)
        return np.asarray(self.charges, np.float64) + core

    def pyscf_ecp(self) -> dict:
        """{element: ECP name} for PySCF's ``gto.M(ecp=...)`` (empty when all-electron)."""
        return {s: e for s, e in zip(self.symbols, self.ecp) if e is not None}

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
            unit="Bohr", basis=basis, ecp=self.pyscf_ecp(), charge=self.charge, spin=self.spin,
            verbose=0)


def resolve_ecp(symbols: Sequence[str], ecp) -> tuple:
    """The ECP name of each atom from the `hamiltonian.ecp` setting.

    Args:
      symbols: element of each atom.
      ecp: None (all-electron), 'ccecp' (every atom heavier than He), or a mapping
        {element: ECP name} (those elements only; H and He too when named).
    Returns:
      per atom an ECP name in lower case (PySCF's names are case-insensitive: 'ccECP' is
      'ccecp') or None.
    Raises:
      InputError: a setting of another form, an element in the mapping that is unknown or
        not in the molecule, or an ECP name PySCF has for no element (checked whether or
        not an atom takes it).
    """
    if ecp is None:
        return (None,) * len(symbols)
    if isinstance(ecp, str):
        if not ecp.strip() or ecp.lower() in ("none", "null"):
            return (None,) * len(symbols)
        _check_ecp_name(ecp, "hamiltonian.ecp")
        return tuple(ecp.lower() if ATOMIC_NUMBER[s] > 2 else None for s in symbols)
    if isinstance(ecp, dict):
        for k, v in ecp.items():
            if k not in ATOMIC_NUMBER:
                raise InputError(f"hamiltonian.ecp.{k}: unknown element; valid: element "
                                 f"symbols" + did_you_mean(str(k).capitalize(), ELEMENTS))
            if v is not None and not isinstance(v, str):
                raise InputError(f"hamiltonian.ecp.{k}: expected an ECP name such as ccecp "
                                 f"(or null), got {v!r}")
            if v is not None:
                _check_ecp_name(v, f"hamiltonian.ecp.{k}")
            if k not in symbols:
                present = ", ".join(dict.fromkeys(symbols))
                raise InputError(f"hamiltonian.ecp.{k}: no {k} atom in the molecule; valid: "
                                 f"its elements ({present})")
        return tuple(None if ecp.get(s) is None else ecp[s].lower() for s in symbols)
    raise InputError(f"hamiltonian.ecp: expected null, an ECP name such as ccecp, or a mapping "
                     f"element -> ECP name, got {ecp!r}")


# ECP names for the messages: ccecp is the one vmc is checked with (README,
# "Pseudopotentials"); the others are PySCF's too
ECP_EXAMPLES = ("ccecp", "lanl2dz", "sbkjc", "stuttgart")


@functools.lru_cache(maxsize=None)
def pyscf_has_ecp(name: str) -> bool:
    """Whether PySCF has an ECP called `name` (`vmc.hf.load_ecp`, any spelling PySCF
    accepts, e.g. ccECP) for at least one element H to Rn."""
    from vmc.hf import load_ecp
    return any(load_ecp(name, sym) is not None for sym in ELEMENTS)


def _ecp_advice(symbol: str, alternative: Optional[str] = None) -> str:
    """What `hamiltonian.ecp` may say for `symbol`: the names of ECP_EXAMPLES that PySCF
    has for it (ccecp first), `alternative`, or that none of them covers it."""
    from vmc.hf import load_ecp
    have = [n for n in ECP_EXAMPLES if load_ecp(n, symbol) is not None]
    opts = [f"hamiltonian.ecp: {have[0]}" + (f" (or {', '.join(have[1:])})" if have[1:]
                                               else "")] if have else []
    opts += [alternative] if alternative else []
    if opts:
        return " or ".join(opts)
    return (f"none: PySCF has none of {', '.join(ECP_EXAMPLES)} for {symbol}, so vmc cannot "
            f"run it")


def _check_ecp_name(name: str, field: str) -> None:
    if not pyscf_has_ecp(name):
        raise InputError(f"{field}: PySCF has no ECP named {name!r} (for any element); valid: "
                         f"ccecp, another ECP PySCF ships (e.g. {', '.join(ECP_EXAMPLES[1:])}), "
                         f"or null (all-electron)" + did_you_mean(name, ECP_EXAMPLES))


def make_molecule(atoms: Sequence[dict], units: str = "bohr", charge: int = 0,
                  spin: int = 0, ecp=None) -> Molecule:
    """Build and validate a Molecule from the YAML form.

    Args:
      atoms: list of ``{symbol: str, position: [x, y, z]}`` (position in `units`).
      units: 'bohr' or 'angstrom'.
      charge: total charge, integer.
      spin: 2S = n_up − n_down, integer (of the valence electrons when an ECP is on).
      ecp: the `hamiltonian.ecp` setting (see `resolve_ecp`); the ECPs are PySCF's
        (``gto.basis.load_ecp``), and the charges become Z_eff = Z − n_core.

    Raises:
      InputError: unknown element or unit, malformed position, two nuclei at one point,
        an element beyond Kr without an ECP, an ECP PySCF does not have for an element,
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
                             f"H to Rn" + did_you_mean(str(sym).capitalize(), ELEMENTS))
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
                raise InputError(f"molecule.atoms: atoms {j} and {i} are "
                                 f"{np.linalg.norm(positions[i] - positions[j]):.2g} bohr "
                                 f"apart (at {positions[i].tolist()} bohr); valid: nuclei at "
                                 f"least 0.001 bohr apart")
    names = resolve_ecp(symbols, ecp)
    n_core = []
    from vmc.hf import load_ecp
    for i, (sym, name) in enumerate(zip(symbols, names)):
        if name is None:
            if ATOMIC_NUMBER[sym] > ALL_ELECTRON_MAX_Z:
                raise InputError(f"molecule.atoms[{i}].symbol: {sym} is beyond Kr, where "
                                 f"all-electron runs stop; valid: " + _ecp_advice(sym))
            n_core.append(0)
            continue
        got = load_ecp(name, sym)
        if got is None:
            alt = "null (all-electron)" if ATOMIC_NUMBER[sym] <= ALL_ELECTRON_MAX_Z else None
            raise InputError(f"hamiltonian.ecp: PySCF has no {name!r} ECP for {sym}; valid: "
                             + _ecp_advice(sym, alt))
        n_core.append(got[0])
    charges = np.asarray([ATOMIC_NUMBER[s] - c for s, c in zip(symbols, n_core)],
                         dtype=np.float64)
    n_el = int(charges.sum()) - charge
    # with an ECP the counts are of valence electrons: say so where they look wrong
    core = f" (valence: the ECPs remove {sum(n_core)} core electrons)" if sum(n_core) else ""
    if n_el <= 0:
        raise InputError(f"molecule.charge: {charge} leaves no electrons (total nuclear charge "
                         f"{int(charges.sum())}{core}); valid: charge < {int(charges.sum())}")
    if abs(spin) > n_el:
        raise InputError(f"molecule.spin: |spin| = {abs(spin)} exceeds the {n_el} electrons"
                         f"{core}; valid: -{n_el} <= spin <= {n_el}")
    if (n_el - spin) % 2:
        valid = "even" if n_el % 2 == 0 else "odd"
        raise InputError(f"molecule.spin: 2S = {spin} does not fit {n_el} electrons{core}; "
                         f"valid: an {valid} value with |spin| <= {n_el}")
    return Molecule(tuple(symbols), charges, positions, charge, spin, names, tuple(n_core))
