"""Reference energies of a run: parsing config.yaml's `molecule.reference`, and the
deviation of an estimate from it (error, σ, chemical accuracy, % of correlation energy).

Energies in hartree (Ha), deviations in mHa. % of the correlation energy: 100 (E_HF − E) /
(E_HF − E_ref) with E_HF the reference's `hf_limit` (shared/reference/README.md).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from vmc.errors import InputError

CHEMICAL_ACCURACY_HA = 1.6e-3   # 1 kcal/mol = 1.594 mHa, rounded as usual in NN-VMC papers
EXACT_KINDS = ("exact", "estimated exact")


@dataclasses.dataclass(frozen=True)
class Reference:
    """Reference energy from config.yaml `molecule.reference` (hartree)."""

    energy: float
    source: str
    kind: str  # 'exact', 'estimated exact', 'CCSD(T)/CBS' or 'other'
    hf_limit: Optional[float]  # literature Hartree-Fock limit, Ha


def parse_reference(config: dict) -> tuple[Optional[Reference], Optional[str]]:
    """(the reference of config.yaml's `molecule.reference`, None) when it is for this run's
    charge, spin and Hamiltonian; (None, why not) when it is for others (`mismatch_note`);
    (None, None) without one."""
    ref = (config.get("molecule") or {}).get("reference")
    if not ref or ref.get("energy") is None:
        return None, None
    from vmc.config import mismatch_note
    note = mismatch_note(config.get("molecule") or {},
                         (config.get("hamiltonian") or {}).get("ecp"))
    if note is not None:
        return None, note   # another Hamiltonian's, charge's or spin's energy
    try:
        hf = ref.get("hf_limit")
        return Reference(float(ref["energy"]), str(ref.get("source", "")),
                         str(ref.get("kind", "exact")), None if hf is None else float(hf)), None
    except (TypeError, ValueError):
        raise InputError(f"molecule.reference: energy and hf_limit must be numbers (Ha), "
                         f"got {ref!r}") from None


def deviation_label(kind: str) -> str:
    """What E − E_ref is called for a reference of this kind: 'error' (exact or estimated
    exact), 'difference to CCSD(T)/CBS' or 'difference to reference'."""
    return ("error" if kind in EXACT_KINDS else "difference to CCSD(T)/CBS"
            if kind == "CCSD(T)/CBS" else "difference to reference")


def compare(e: float, se: float, ref: Reference) -> dict:
    """Deviation from the reference: fields of RunSummary (see its docstring)."""
    exactish = ref.kind in EXACT_KINDS
    corr = None
    if ref.hf_limit is not None and ref.hf_limit != ref.energy:
        corr = 100.0 * (ref.hf_limit - e) / (ref.hf_limit - ref.energy)
    return dict(deviation_mha=1e3 * (e - ref.energy),
                deviation_sigma=(e - ref.energy) / se if se else None,
                deviation_label=deviation_label(ref.kind),
                within_chemical_accuracy=bool(abs(e - ref.energy) <= CHEMICAL_ACCURACY_HA)
                if exactish else None, correlation_pct=corr)
