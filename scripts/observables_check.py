"""Observables of trained FermiNet networks against exact / FCI-quality references (README).

    python scripts/observables_check.py [--out runs/obs_check] [--parts forces,s2,density]
        [--h2-steps 1500] [--lih-steps 2500] [--be-steps 3000] [--h-steps 1000]
        [--eval-steps 2000] [--walkers 256]

Each system is trained with `vmc run` (default ansatz and sizes, `optim.steps` as given,
no final evaluation) and evaluated with `vmc eval RUN_DIR --observables ...` on
walkers × eval-steps samples (256 × 2000 = 5.1·10⁵ by default); a run directory that already
holds a checkpoint / an evaluation with the observables is reused (delete it to redo).

- forces: H₂ at R = 1.0, 1.4, 2.0 bohr and LiH at 2.8, 3.4 bohr; the force along the bond,
  (F_2z − F_1z)/2 (hartree/bohr, + = repulsive), plain Hellmann–Feynman, zero-variance (ZV)
  and ZV + zero-bias (Pulay), against −dE/dR of PySCF energies by central differences
  (step 0.005 bohr): H₂ CCSD (exact in the basis = FCI) in aug-cc-pVQZ, LiH CCSD(T) in
  cc-pCVQZ (Li) / cc-pVQZ (H), all electrons correlated (cached in OUT/references.json).
  Pass: |ZV+ZB − ref| ≤ 3σ + 1 mHa/bohr; ⟨S²⟩ of each geometry printed below the table.
- s2: ⟨S²⟩ of Be with 2S = 2 (3 up + 1 down; pass: 2 within 3σ).
- density: the H atom's radial density against e^{−2r}/π averaged over each shell;
  χ² per bin (pass: near 1; printed with its 2σ band √(2/bins)).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
H2_BONDS = (1.0, 1.4, 2.0)
LIH_BONDS = (2.8, 3.4)
FD_STEP = 0.005   # bohr, central differences of the reference energy


# ------------------------------------------------------------------------- references
def parse_basis(spec: str):
    """'aug-cc-pvqz' or per element 'Li:cc-pcvtz,H:cc-pvtz' (PySCF's basis argument)."""
    if ":" not in spec:
        return spec
    return dict(item.split(":", 1) for item in spec.split(","))


def reference_energy(symbols, r: float, basis: str) -> float:
    """Correlated energy of a diatomic along z at bond length r (bohr), hartree: CCSD for two
    electrons (= FCI in the basis; PySCF's FCI solver takes minutes for 92 orbitals), else
    CCSD(T) (for LiH within ~0.01 mHa of FCI), on RHF orbitals, all electrons correlated."""
    from pyscf import cc, gto, scf
    mol = gto.M(atom=[[symbols[0], (0.0, 0.0, 0.0)], [symbols[1], (0.0, 0.0, r)]],
                unit="bohr", basis=parse_basis(basis), verbose=0)
    mf = scf.RHF(mol).run(conv_tol=1e-11)
    c = cc.CCSD(mf)
    c.conv_tol = 1e-10
    c.kernel()
    return float(c.e_tot + (c.ccsd_t() if mol.nelectron > 2 else 0.0))


def reference_force(symbols, r: float, basis: str, cache: dict, cache_path: Path) -> float:
    """−dE/dR of `reference_energy` by central differences (hartree/bohr), cached in
    `cache_path`."""
    key = f"{''.join(symbols)} {r:.4f} {basis} {FD_STEP}"
    if key not in cache:
        t = time.time()
        ep, em = (reference_energy(symbols, r + s, basis) for s in (FD_STEP, -FD_STEP))
        cache[key] = {"force": -(ep - em) / (2 * FD_STEP), "e_plus": ep, "e_minus": em,
                      "seconds": time.time() - t}
        cache_path.write_text(json.dumps(cache, indent=1))
    return cache[key]["force"]


def shell_density_exact(edges) -> np.ndarray:
    """Shell average of the H atom's ρ = e^{−2r}/π: N(shell)/V(shell), electrons/bohr³."""
    e = np.asarray(edges, np.float64)
    inside = 1.0 - np.exp(-2 * e) * (1 + 2 * e + 2 * e * e)     # electrons within r
    return np.diff(inside) / (4.0 * np.pi / 3.0 * np.diff(e ** 3))


# --------------------------------------------------------------------------- vmc runs
def vmc(*args, log: Path) -> None:
    """Run the vmc CLI of this interpreter's environment; raise with the log's tail."""
    exe = Path(sys.executable).with_name("vmc")
    cmd = [str(exe) if exe.exists() else "vmc", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); see {log}:\n"
                         + "".join(log.read_text().splitlines(True)[-15:]))


def write_system(path: Path, atoms, spin: int = 0) -> Path:
    import yaml
    path.write_text(yaml.safe_dump({"atoms": atoms, "units": "bohr", "charge": 0,
                                    "spin": spin}, sort_keys=False))
    return path


def trained_observables(run_dir: Path, system: Path, steps: int, observables: str,
                        args) -> dict:
    """Train (unless a checkpoint is there) and evaluate (unless an evaluation with these
    observables is there); returns summary.json with 'observables' and 'minutes'."""
    log = run_dir.parent / f"{run_dir.name}.log"
    t = time.time()
    if not (run_dir / "checkpoints").is_dir():
        vmc("run", system, "--out", run_dir, "--set", f"optim.steps={steps}",
            "--set", "eval.steps=0", "--set", "run.progress=false", log=log)
    summ = run_dir / "summary.json"
    s = json.loads(summ.read_text()) if summ.exists() else {}
    have = set((s.get("observables") or {}).keys())
    want = set(observables.split(","))
    if not want <= have or s.get("eval_steps") != args.eval_steps:
        vmc("eval", run_dir, "--observables", observables, "--steps", args.eval_steps,
            "--walkers", args.walkers, "--burn-in", args.burn_in, log=log)
        s = json.loads(summ.read_text())
    s["minutes"] = (time.time() - t) / 60
    return s


def along_bond(forces: dict, name: str) -> tuple[float, float]:
    """(F_2z − F_1z)/2 and its error bar from summary.json's forces[name]."""
    m, e = np.asarray(forces[name]["mean"]), np.asarray(forces[name]["stderr"])
    return 0.5 * (m[1, 2] - m[0, 2]), 0.5 * float(np.hypot(e[0, 2], e[1, 2]))


# ----------------------------------------------------------------------------- parts
def part_forces(args, out: Path) -> list[bool]:
    cache_path = out / "references.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rows, passed = [], []
    systems = [("H2", ("H", "H"), r, args.h2_steps, args.h2_basis) for r in H2_BONDS] + \
              [("LiH", ("Li", "H"), r, args.lih_steps, args.lih_basis) for r in LIH_BONDS]
    for name, sym, r, steps, basis in systems:
        ref = reference_force(sym, r, basis, cache, cache_path)
        atoms = [{"symbol": sym[0], "position": [0.0, 0.0, 0.0]},
                 {"symbol": sym[1], "position": [0.0, 0.0, r]}]
        run_dir = out / f"{name}_{r:.2f}"
        system = write_system(out / f"{name}_{r:.2f}.yaml", atoms)
        s = trained_observables(run_dir, system, steps, "forces,s2", args)
        cells = [along_bond(s["observables"]["forces"], k) for k in ("hf", "zv", "zv_zb")]
        m, e = cells[2]
        ok = abs(m - ref) <= 3 * e + 1e-3
        passed.append(ok)
        rows.append((name, sym, r, steps, s, cells, ref, basis, ok))
        print(f"  [{name} R={r:.2f}: {s['minutes']:.1f} min]", file=sys.stderr, flush=True)
    print(f"Forces along the bond (Ha/bohr, + = repulsive), trained FermiNet (default size), "
          f"{args.walkers} walkers x {args.eval_steps} steps = "
          f"{args.walkers * args.eval_steps:.2g} samples per geometry")
    print(f"{'system':<4} {'R':>5} {'train':>5} {'E - E_ref mHa':>13} {'plain HF':>17} "
          f"{'ZV':>17} {'ZV + ZB':>17} {'-dE_ref/dR':>10} {'dev/σ':>6} pass")
    for name, sym, r, steps, s, cells, ref, basis, ok in rows:
        key = f"{''.join(sym)} {r:.4f} {basis} {FD_STEP}"
        e_ref = 0.5 * (cache[key]["e_plus"] + cache[key]["e_minus"])
        dev = (cells[2][0] - ref) / cells[2][1]
        print(f"{name:<4} {r:>5.2f} {steps:>5} {1e3 * (s['energy_ha'] - e_ref):>+8.2f}±"
              f"{1e3 * s['energy_stderr_ha']:.2f} "
              + " ".join(f"{m:+8.4f}±{e:.4f}" for m, e in cells)
              + f" {ref:>+10.4f} {dev:>+6.1f} {'yes' if ok else 'NO'}")
    print(f"reference: PySCF, H2 CCSD (= FCI) {args.h2_basis}, LiH CCSD(T) {args.lih_basis}, "
          f"central differences ±{FD_STEP} bohr; pass: |ZV+ZB − ref| ≤ 3σ + 1 mHa/bohr")
    for name, sym, r, steps, s, cells, ref, basis, ok in rows:
        if "s2" in s["observables"]:
            o = s["observables"]["s2"]
            print(f"  <S^2> {name} R={r:.2f}: {o['mean']:+.5f} ± {o['stderr']:.5f}")
    return passed


def part_s2(args, out: Path) -> list[bool]:
    system = write_system(out / "Be_spin2.yaml",
                          [{"symbol": "Be", "position": [0.0, 0.0, 0.0]}], spin=2)
    s = trained_observables(out / "Be_spin2", system, args.be_steps, "s2", args)
    o = s["observables"]["s2"]
    ok = abs(o["mean"] - 2.0) <= 3 * o["stderr"]
    print(f"<S^2> of Be, 2S = 2 (3 up + 1 down), FermiNet trained {args.be_steps} steps, "
          f"E = {s['energy_ha']:.5f} ± {1e3 * s['energy_stderr_ha']:.2f} mHa: "
          f"{o['mean']:.5f} ± {o['stderr']:.5f} (exact triplet 2; dev/σ "
          f"{(o['mean'] - 2) / o['stderr']:+.1f}) pass {'yes' if ok else 'NO'}")
    print(f"  [{s['minutes']:.1f} min]", file=sys.stderr, flush=True)
    return [ok]


def part_density(args, out: Path) -> list[bool]:
    system = write_system(out / "H_atom.yaml",
                          [{"symbol": "H", "position": [0.0, 0.0, 0.0]}], spin=1)
    s = trained_observables(out / "H_atom", system, args.h_steps, "density", args)
    d = s["observables"]["density"]
    m, e = np.asarray(d["radial"]["mean"]), np.asarray(d["radial"]["stderr"])
    exact = shell_density_exact(d["radial_edges_bohr"])
    use = e > 0
    chi2 = float(np.sum(((m[use] - exact[use]) / e[use]) ** 2))
    k = int(use.sum())
    band = 2 * np.sqrt(2.0 / k)
    ok = abs(chi2 / k - 1) <= band
    print(f"Density of the H atom, FermiNet trained {args.h_steps} steps (E = "
          f"{s['energy_ha']:.6f} ± {1e3 * s['energy_stderr_ha']:.3f} mHa): radial "
          f"histogram, {k} bins on [0, {d['radial_edges_bohr'][-1]:g}) bohr, outside share "
          f"{d['radial_outside_share']:.2e}")
    print(f"chi^2 per bin against e^(-2r)/pi: {chi2 / k:.3f} (expected 1 ± {band:.2f} at 2σ) "
          f"pass {'yes' if ok else 'NO'}")
    for i in range(0, len(m), max(1, len(m) // 8)):
        lo, hi = d["radial_edges_bohr"][i], d["radial_edges_bohr"][i + 1]
        print(f"  r in [{lo:4.2f}, {hi:4.2f}): rho {m[i]:.4e} ± {e[i]:.1e}  exact {exact[i]:.4e}"
              f"  dev/σ {(m[i] - exact[i]) / e[i]:+.1f}")
    print(f"  [{s['minutes']:.1f} min]", file=sys.stderr, flush=True)
    return [ok]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/obs_check")
    p.add_argument("--parts", default="forces,s2,density")
    p.add_argument("--h2-steps", type=int, default=1500)
    p.add_argument("--lih-steps", type=int, default=2500)
    p.add_argument("--be-steps", type=int, default=3000)
    p.add_argument("--h-steps", type=int, default=1000)
    p.add_argument("--eval-steps", type=int, default=2000)
    p.add_argument("--walkers", type=int, default=256)
    p.add_argument("--burn-in", type=int, default=300)
    p.add_argument("--h2-basis", default="aug-cc-pvqz")
    p.add_argument("--lih-basis", default="Li:cc-pcvqz,H:cc-pvqz")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"forces": part_forces, "s2": part_s2, "density": part_density}
    results = {}
    for name in args.parts.split(","):
        results[name] = all(parts[name](args, out))
        print(flush=True)
    print("passed: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
