"""Run systems as a user would, with their defaults, and write a README results table.

    python scripts/accuracy.py [--systems He H2 Li] [--out runs/accuracy] [--no-readme]
    python scripts/accuracy.py --systems LiH Be H- Li+ Be+ Li- B+ --out runs/chem \
        --marker chemistry

Each system runs `vmc run <file> --out <out>/<name>` with its defaults, where <file> is
systems/<name>.yaml or else examples/<name>.yaml (the hand-written ion files). An existing
finished run is reused; delete it to rerun. The table is rebuilt from the summary.json files
and written between the `<!-- MARKER:begin -->` and `<!-- MARKER:end -->` lines of README.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# |error| (mHa), stderr (mHa, None: no target), wall time (s, None: no target)
TARGETS = {"He": (0.3, 0.08, 300), "H2": (0.3, 0.08, 300), "Li": (1.0, 0.25, 600),
           "LiH": (1.6, None, 1800), "Be": (3.0, None, 1800),
           "H-": (2.0, None, None), "Li+": (2.0, None, None), "Be+": (2.0, None, None),
           "Li-": (2.0, None, None), "B+": (2.0, None, None)}


def config_file(name: str, label: str = "") -> pathlib.Path:
    """systems/<name>.yaml, else examples/<name>.yaml; else SystemExit with one error line
    (`label` goes after "error: ", e.g. "rung 'X': ")."""
    for folder in ("systems", "examples"):
        path = ROOT / folder / f"{name}.yaml"
        if path.exists():
            return path
    raise SystemExit(f"error: {label}no systems/{name}.yaml or examples/{name}.yaml")


def run(name: str, out: pathlib.Path) -> dict:
    run_dir = out / name
    if not (run_dir / "summary.json").exists():
        cmd = ["vmc", "run", str(config_file(name)), "--out", str(run_dir)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((run_dir / "summary.json").read_text())


def table(summaries: list[dict]) -> str:
    rows = ["| system | energy (Ha) | stderr (mHa) | reference (Ha) | error (mHa) | "
            "target \\|error\\|, stderr (mHa) | wall (s) | steps | eval steps | params |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        err, se = s["deviation_mha"], 1000 * s["energy_stderr_ha"]
        tgt = TARGETS.get(s["system"])
        target = ""
        if tgt:
            ok = (abs(err) <= tgt[0] and (tgt[1] is None or se <= tgt[1])
                  and (tgt[2] is None or s["wall_s"] <= tgt[2]))
            target = (f"<= {tgt[0]}" + (f", <= {tgt[1]}" if tgt[1] is not None else ", -")
                      + (f" in <= {tgt[2]} s" if tgt[2] is not None else "")
                      + (" (met)" if ok else " (MISSED)"))
        rows.append(f"| {s['system']} | {s['energy_ha']:.6f} | {se:.3f} | {s['reference_ha']} | "
                    f"{err:+.3f} | {target} | {s['wall_s']:.0f} | {s['train_steps']} | "
                    f"{s['eval_steps']} | {s['n_params']} |")
    meta = summaries[0]
    rows.append("")
    rows.append(f"Defaults, {meta['dtype']}, {meta['walkers']} walkers, solver `{meta['solver']}`; "
                f"vmc {meta['vmc_version']} ({(meta['git_commit'] or '')[:8]}), jax "
                f"{meta['jax_version']}, {meta['device_kind']}. Written by scripts/accuracy.py.")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--systems", nargs="+", default=list(TARGETS))
    p.add_argument("--out", default=str(ROOT / "runs" / "accuracy"))
    p.add_argument("--marker", default="accuracy", help="README marker pair to write between")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args()
    summaries = [run(n, pathlib.Path(args.out)) for n in args.systems]
    text = table(summaries)
    print(text)
    BEGIN, END = f"<!-- {args.marker}:begin -->", f"<!-- {args.marker}:end -->"
    if not args.no_readme:
        readme = ROOT / "README.md"
        body = readme.read_text()
        if BEGIN in body and END in body:
            head, rest = body.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
            print("README.md updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
