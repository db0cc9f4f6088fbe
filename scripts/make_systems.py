"""Write systems/<name>.yaml from ../shared/reference/energies.yaml (geometry in bohr).

Usage: python scripts/make_systems.py [path/to/energies.yaml]
Each file holds only the molecule and its reference energy; every setting is defaulted.
"""

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared/reference/energies.yaml")


def kind_of(text: str) -> str:
    t = text.lower()
    if t.startswith("exact"):
        return "exact"
    if "ccsd(t)" in t:
        return "CCSD(T)/CBS"
    if "estimated exact" in t or "est. exact" in t or "extrapolated" in t:
        return "estimated exact"
    return "other"


for entry in yaml.safe_load(src.read_text()):
    name = entry["name"]
    lines = [f"# {entry.get('description', name)}. Geometry in bohr: {entry.get('geometry_source', '')}".rstrip(),
             "atoms:"]
    for atom in entry["atoms"]:
        x, y, z = (float(c) for c in atom["xyz_bohr"])
        lines.append(f"  - {{symbol: {atom['symbol']}, position: [{x!r}, {y!r}, {z!r}]}}")
    lines += ["units: bohr", f"charge: {entry['charge']}", f"spin: {entry['spin']}"]
    ref = entry.get("exact_energy_ha")
    if ref and ref.get("value") is not None:
        r = {"hamiltonian": "all-electron", "energy": float(ref["value"]), "kind": kind_of(ref.get("kind", "")),
             "source": str(ref.get("source", "")).replace("\n", " ")}
        lim = (entry.get("hf_energy_ha") or {}).get("literature_limit")
        if lim and lim.get("value") is not None:
            r["hf_limit"] = float(lim["value"])
        lines.append("reference: " + yaml.safe_dump(r, default_flow_style=True, width=10**6).strip())
    (ROOT / "systems" / f"{name}.yaml").write_text("\n".join(lines) + "\n")
    print(f"systems/{name}.yaml")
