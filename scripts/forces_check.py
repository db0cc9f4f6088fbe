"""Forces of the `hf` ansatz against PySCF's analytic RHF gradient (table for the README).

    python scripts/forces_check.py [--walkers 1024] [--steps 500] [--bonds 1.0,1.4,2.0]
                                   [--system H2|LiH]

For the `hf` ansatz (PySCF's determinant, MO coefficients fixed, basis moving with the
nuclei) the derivative of the VMC energy is exactly PySCF's RHF gradient (HF is stationary
in the orbitals), so ZV + ZB must reproduce −dE_HF/dR; plain Hellmann–Feynman and ZV alone
miss the Pulay term of the Gaussian basis. Printed per bond length: the force along the bond,
(F_1z − F_0z)/2 (both nuclei, hartree/bohr; negative = attractive), with reblocked error bars.
Trained networks against FCI-quality forces: scripts/observables_check.py.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

ATOMS = {"H2": ("H", "H"), "LiH": ("Li", "H")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="H2", choices=sorted(ATOMS))
    p.add_argument("--walkers", type=int, default=1024)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--burn-in", type=int, default=100)
    p.add_argument("--bonds", default="1.0,1.4,2.0", help="bond lengths, bohr")
    args = p.parse_args(argv)
    import jax
    jax.config.update("jax_enable_x64", True)
    from pyscf import scf

    from vmc.config import config_from_dict
    from vmc.evaluate import evaluate
    from vmc.obs_report import summarize_observables
    from vmc.sampler import init_walkers
    from vmc.train import build

    a, b = ATOMS[args.system]
    print(f"{args.system} hf ansatz (RHF/cc-pVDZ), {args.walkers} walkers x {args.steps} steps "
          f"= {args.walkers * args.steps:.2g} samples; force along the bond (Ha/bohr)")
    print(f"{'R (bohr)':>8} {'plain HF':>18} {'HF + ZB':>18} {'ZV':>18} {'ZV + ZB':>18} "
          f"{'PySCF RHF':>10} {'dev/σ':>6} {'s':>5}")
    for r in (float(v) for v in args.bonds.split(",")):
        atoms = [{"symbol": a, "position": [0.0, 0.0, 0.0]},
                 {"symbol": b, "position": [0.0, 0.0, r]}]
        cfg = config_from_dict({"atoms": atoms}, overrides=("ansatz.name=hf", "sampler.moves=4"))
        setup = build(cfg)
        mf = scf.RHF(setup.molecule.to_pyscf("cc-pvdz")).run()
        ref = -mf.nuc_grad_method().kernel()
        want = 0.5 * (ref[1, 2] - ref[0, 2])
        w = init_walkers(jax.random.PRNGKey(0), setup.molecule, args.walkers, 1.0, setup.dtype)
        t = time.time()
        res = evaluate(setup, {}, w, 0.3, steps=args.steps, burn_in=args.burn_in,
                       key=jax.random.PRNGKey(1), observables=("forces",))
        f = summarize_observables(res.observables, {"walkers": args.walkers})["forces"]
        cells = []
        for name in ("hf", "hf_zb", "zv", "zv_zb"):
            m, e = np.asarray(f[name]["mean"]), np.asarray(f[name]["stderr"])
            cells.append((0.5 * (m[1, 2] - m[0, 2]), 0.5 * np.hypot(e[0, 2], e[1, 2])))
        dev = (cells[3][0] - want) / cells[3][1]
        print(f"{r:>8.2f} " + " ".join(f"{m:+9.4f} ± {e:.4f}" for m, e in cells)
              + f" {want:+10.4f} {dev:+6.1f} {time.time() - t:5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
