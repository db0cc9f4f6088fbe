"""Training-step time of this checkout against another commit, side by side (issue #13).

    python scripts/bench_step.py                          # against 3cba5f0, Li and N
    python scripts/bench_step.py --base 3cba5f0 --systems Li --steps 300 --rounds 3
    python scripts/bench_step.py --parts --systems Li N      # the profile, both checkouts

For each system, `vmc run systems/X.yaml` at FermiNet's Li benchmark network ((128,16)×3,
8 determinants, 256 walkers, 10 moves per step, KFAC, no pretraining, no evaluation) runs
once per round for each checkout, alternating (base, this, base, this, ...); the base commit's
`vmc` and `systems` are exported with `git archive` into a temporary folder, and its runs
start there (working directory and PYTHONPATH), with its own molecule files. Each child
first reports which `vmc` it imports; a run that would import the other checkout's stops
the script (`python -m` puts the working directory ahead of PYTHONPATH, and that once made
both columns this checkout). A run's
step time is the median of train.h5's `step_time` over steps 20 … end (compilation left
out); the table gives each checkout's best median over the rounds, their ratio this/base,
and the median over rounds of each round's own ratio (paired rounds: the two runs of a
round are neighbours in time, so a load change hits both). With `--parts`, each round runs
scripts/_bench_step_parts.py in both checkouts instead (the step's parts, each jitted on its own at one state, median of `--repeats`
calls) and prints, per system, each part's best ms over the rounds in both and the ratio: the
profile before and after. Runs share the machine with nothing else only if you make it so: the
alternation spreads any load over both.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARK = ("ansatz.hidden_one=[128,128,128]", "ansatz.hidden_two=[16,16,16]",
             "ansatz.determinants=8", "sampler.walkers=256", "sampler.moves=10",
             "optim.solver=kfac", "pretrain.steps=0", "eval.steps=0", "run.progress=false",
             "run.log_every=100000", "run.checkpoint_every=100000")


def export(commit: str, dest: pathlib.Path) -> pathlib.Path:
    """`git archive commit vmc systems` unpacked under dest; returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "vmc", "systems"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def median_step(run_dir: pathlib.Path, skip: int = 20) -> float:
    import h5py
    with h5py.File(run_dir / "train.h5", "r") as f:
        t = f["stats/step_time"][:]
    return statistics.median(t[skip:])


def child_env(src: pathlib.Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "JAX_PLATFORMS": os.environ.get(
        "JAX_PLATFORMS", "cpu")}


def imported_vmc(src: pathlib.Path) -> pathlib.Path:
    """The `vmc` package a child started like `one_run`'s imports (its folder).

    Raises:
      SystemExit: it is not src/vmc.
    """
    out = subprocess.run([sys.executable, "-c", "import vmc; print(vmc.__file__)"],
                         env=child_env(src), cwd=src, capture_output=True, text=True,
                         check=True).stdout.strip()
    got = pathlib.Path(out).resolve().parent
    if got != (src / "vmc").resolve():
        raise SystemExit(f"a child started in {src} imports {got}, not {src / 'vmc'}")
    return got


def run_child(cmd: list, src: pathlib.Path) -> str:
    """cmd's stdout, run in checkout src (working directory and PYTHONPATH).

    Raises:
      SystemExit: it failed (with the tail of its stderr).
    """
    proc = subprocess.run(cmd, env=child_env(src), cwd=src, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} in {src} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def one_run(src: pathlib.Path, system: str, steps: int, out: pathlib.Path) -> float:
    cmd = [sys.executable, "-m", "vmc.cli", "run", str(src / "systems" / f"{system}.yaml"),
           "--out", str(out), "--set", f"optim.steps={steps}"]
    for s in BENCHMARK:
        cmd += ["--set", s]
    run_child(cmd, src)
    return median_step(out)


PARTS = ("moves", "refresh", "local energy", "update", "step")


def parts_run(src: pathlib.Path, system: str, repeats: int) -> dict:
    """ms per part (scripts/_bench_step_parts.py) of the benchmark step in checkout src."""
    cmd = [sys.executable, str(ROOT / "scripts" / "_bench_step_parts.py"), system,
           str(repeats), *BENCHMARK]
    return json.loads(run_child(cmd, src).strip().splitlines()[-1])


def parts_table(system: str, base: str, best: dict) -> str:
    """The system's name, then a Markdown table: part, base ms (share of the base step),
    this ms (share), this/base; each figure the best over the rounds."""
    lines = [f"{system}:", "", f"| part | {base} ms (share) | this ms (share) | this/base |",
             "|---|---|---|---|"]
    for part in PARTS:
        b, t = best["base"][part], best["this"][part]
        lines.append(f"| {part} | {b:.1f} ({b / best['base']['step']:.0%}) | {t:.1f} "
                     f"({t / best['this']['step']:.0%}) | {t / b:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="3cba5f0")
    p.add_argument("--systems", nargs="+", default=["Li", "N"])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", action="store_true",
                   help="time the step's parts in both checkouts instead of whole runs")
    p.add_argument("--repeats", type=int, default=15, help="calls per part (--parts)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        base_src = export(args.base, (tmp / "base").resolve())
        sources = {"base": base_src, "this": ROOT}
        for name, src in sources.items():
            print(f"{name}: vmc from {imported_vmc(src)}", file=sys.stderr, flush=True)
        if args.parts:
            for system in args.systems:
                best = {"base": {}, "this": {}}
                for r in range(args.rounds):
                    for name, src in sources.items():
                        ms = parts_run(src, system, args.repeats)
                        print(f"{system} round {r} {name}: {json.dumps(ms)}", file=sys.stderr,
                              flush=True)
                        best[name] = {k: min(v, best[name].get(k, v)) for k, v in ms.items()}
                print(parts_table(system, args.base, best), flush=True)
            return 0
        for system in args.systems:
            times = {"base": [], "this": []}
            for r in range(args.rounds):
                for name, src in sources.items():
                    t = one_run(src, system, args.steps, tmp / f"{system}-{name}-{r}")
                    times[name].append(t)
                    print(f"{system} round {r} {name}: median step {t:.4f} s", file=sys.stderr,
                          flush=True)
            paired = statistics.median(t / b for b, t in zip(times["base"], times["this"]))
            rows.append((system, min(times["base"]), min(times["this"]), paired))
    print(f"| system | {args.base} s/step | this s/step | this/base | paired rounds |")
    print("|---|---|---|---|---|")
    for system, b, t, paired in rows:
        print(f"| {system} | {b:.4f} | {t:.4f} | {t / b:.2f} | {paired:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
