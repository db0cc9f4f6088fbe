"""H2 dissociation curve: several bond lengths, each warm-started from its neighbour.

    python scripts/h2_curve.py [--lengths 1.4 1.2 1.0 1.6 2.0 2.5 3.0] [--out runs/h2_curve]
                               [--steps 1000] [--warm-steps 400] [--eval-steps 1000]

The first length trains from scratch (`--steps`); each next one starts from the previous
run's parameters and walkers (`vmc run --init-from`) and trains `--warm-steps`. Then
`vmc analyze` writes the table and the curve PNG (energy vs bond length, bohr).
Only R = 1.4 bohr has an exact reference in shared/reference (Pachucki 2010).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXACT = {1.4: -1.1744757142}


def write_config(path: pathlib.Path, r: float) -> None:
    ref = (f"reference: {{energy: {EXACT[r]}, kind: exact, source: 'Pachucki, Phys. Rev. A 82, "
           f"032509 (2010)'}}\n" if r in EXACT else "")
    path.write_text(f"name: H2_R{r:.2f}\natoms:\n  - {{symbol: H, position: [0.0, 0.0, {-r / 2!r}]}}\n"
                    f"  - {{symbol: H, position: [0.0, 0.0, {r / 2!r}]}}\n{ref}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=float, nargs="+", default=[1.4, 1.2, 1.0, 1.6, 2.0, 2.5, 3.0])
    p.add_argument("--out", default=str(ROOT / "runs" / "h2_curve"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warm-steps", type=int, default=400)
    p.add_argument("--eval-steps", type=int, default=1000)
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dirs, previous = [], None
    # walk outwards from the first length: each run starts from its nearest finished neighbour
    for r in args.lengths:
        cfg = out / f"H2_R{r:.2f}.yaml"
        write_config(cfg, r)
        run_dir = out / f"R{r:.2f}"
        if not (run_dir / "summary.json").exists():
            cmd = ["vmc", "run", str(cfg), "--out", str(run_dir),
                   "--set", f"eval.steps={args.eval_steps}"]
            if previous is None:
                cmd += ["--set", f"optim.steps={args.steps}"]
            else:
                near = min(previous, key=lambda d: abs(d[0] - r))[1]
                cmd += ["--init-from", str(near), "--set", f"optim.steps={args.warm_steps}"]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        previous = (previous or []) + [(r, run_dir)]
        dirs.append(str(run_dir))
    return subprocess.run(["vmc", "analyze", *dirs, "--curve-param", "bond_length",
                           "--curve-out", str(out / "h2_curve.png")]).returncode


if __name__ == "__main__":
    sys.exit(main())
