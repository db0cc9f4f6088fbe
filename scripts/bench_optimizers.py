"""Benchmark the SR solvers and Adam on the Li atom with `vmc run` (one subprocess per run).

Li, FermiNet hidden_one (128,128,128), hidden_two (16,16,16), 8 determinants (~116k
parameters), 256 walkers, 1000 steps, 3 seeds; every solver but `dense` (sample, cg, kfac,
kfac-cg, spring) at the config's defaults, plus Adam at lr 3e-4, 1e-3, 3e-3. Run directories
go to runs/bench/<solver>_steps<N>_seed<s>/ (a finished run is reused; one with
checkpoints is resumed). Per run: the error of the frozen-parameter evaluation against the
exact Li energy (summary.json), the mean of the last 100 training energies (train.h5), the
median seconds per step (train.h5 step_time) as a ratio to Adam's, and the peak RSS of the
`vmc run` process (wait4). The table shows medians over seeds.

Equal wall time: T is the shortest total training time (sum of step_time, compilation excluded) of any solver's
run; each run's "error at equal wall time" is the mean training energy over the (up to) 100
steps that end where its cumulative step time first reaches T, minus the exact energy.

Clean timing (`--timing-steps N`): the long runs may share the machine (e.g. two queues, one
core each), which distorts their step times. With N > 0 each solver also gets one short run
(N steps, seed 0, no pretraining or evaluation) under runs/bench/timing/, all of them one
after another in this process's queue. Each long run's step times are then multiplied by
f = (median clean step time over steps 2..N) / (its own median over the same steps), which
keeps the profile over the run (CG's iteration count falls as training settles); seconds per
step (the median of the rescaled times), its ratio to Adam and the equal-wall-time cut use the
rescaled times.

The full benchmark takes hours on a 2-core CPU. A short check:

    python scripts/bench_optimizers.py --steps 20 --seeds 1 --eval-steps 20 --pretrain-steps 0
    python scripts/bench_optimizers.py --solvers cg adam@1e-3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys

import numpy as np

EXACT_LI = -7.478060323   # Ha, exact non-relativistic Li energy
DEFAULT_SOLVERS = ("sample", "cg", "kfac", "kfac-cg", "spring", "adam@3e-4", "adam@1e-3",
                   "adam@3e-3")
LI_YAML = f"""# Lithium atom (written by scripts/bench_optimizers.py).
atoms:
  - {{symbol: Li, position: [0.0, 0.0, 0.0]}}
charge: 0
spin: 1
reference: {{energy: {EXACT_LI}, kind: exact, source: "exact non-relativistic Li energy"}}
"""
NETWORK = ("ansatz.name=ferminet", "ansatz.hidden_one=[128,128,128]",
           "ansatz.hidden_two=[16,16,16]", "ansatz.determinants=8", "sampler.walkers=256")


def _parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps per run")
    p.add_argument("--seeds", type=int, default=3, help="seeds F .. F+N-1 per solver")
    p.add_argument("--first-seed", type=int, default=0,
                   help="F, the first seed (to split one solver's seeds over queues)")
    p.add_argument("--solvers", nargs="+", default=list(DEFAULT_SOLVERS),
                   help="solver names; adam@LR for Adam at learning rate LR")
    p.add_argument("--eval-steps", type=int, default=None,
                   help="evaluation steps (default: the config's, 2000)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="Hartree-Fock pretraining steps (default: the config's, 1000 for Li)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra `vmc run --set` override for every run")
    p.add_argument("--out", default="runs/bench", help="folder of the run directories")
    p.add_argument("--timing-steps", type=int, default=0,
                   help="N > 0: step times from a separate, serial N-step run per solver")
    p.add_argument("--no-new-runs", action="store_true",
                   help="report the finished benchmark runs only; start or resume none "
                        "(clean-timing runs still run)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per solver instead of the table")
    return p


def _solver_sets(name: str) -> tuple[str, ...]:
    if name.startswith("adam@"):
        return ("optim.solver=adam", f"optim.lr={float(name.split('@', 1)[1])}")
    return (f"optim.solver={name}",)


def _vmc_command() -> list[str]:
    exe = pathlib.Path(sys.executable).with_name("vmc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vmc.cli"]


def _run_one(args, config: pathlib.Path, name: str, seed: int,
             timing: bool = False) -> dict | None:
    """Run (or reuse) one `vmc run`; returns its raw results or None if it failed.

    timing: the short clean-timing run (`--timing-steps` steps, no pretraining or evaluation)
    under <out>/timing/ instead of the benchmark run.
    """
    steps = args.timing_steps if timing else args.steps
    root = pathlib.Path(args.out) / ("timing" if timing else "")
    out = root / f"{name.replace('@', '_lr')}_steps{steps}_seed{seed}"
    meta = out / "bench.json"
    if (out / "summary.json").exists() and meta.exists():
        return _results(out, json.loads(meta.read_text())["peak_mb"])
    if args.no_new_runs and not timing:
        return None
    sets = [*NETWORK, *_solver_sets(name), f"optim.steps={steps}", f"run.seed={seed}",
            "run.progress=false"]
    if timing:
        sets += ["eval.steps=0", "pretrain.steps=0"]
    else:
        if args.eval_steps is not None:
            sets.append(f"eval.steps={args.eval_steps}")
        if args.pretrain_steps is not None:
            sets.append(f"pretrain.steps={args.pretrain_steps}")
    sets += args.overrides
    cmd = _vmc_command() + ["run", str(config), "--out", str(out)]
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("ckpt_*.h5")):
        cmd.append("--resume")
    elif out.exists():
        shutil.rmtree(out)          # a run that died before its first checkpoint
    for s in sets:
        cmd += ["--set", s]
    log = root / "logs" / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[bench] {name} seed {seed}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not (out / "summary.json").exists():
        print(f"[bench] {name} seed {seed}: failed (exit {code}); see {log}", file=sys.stderr)
        return None
    peak_mb = usage.ru_maxrss / 1024.0             # Linux: KiB
    meta.write_text(json.dumps({"peak_mb": peak_mb}) + "\n")
    return _results(out, peak_mb)


def _results(out: pathlib.Path, peak_mb: float) -> dict:
    from vmc.h5io import read_stats
    summary = json.loads((out / "summary.json").read_text())
    stats = read_stats(out / "train.h5")
    energy = np.asarray(stats["energy"], float)
    tail = energy[-100:][np.isfinite(energy[-100:])]
    step_time = np.asarray(stats["step_time"], float)
    e, se = summary.get("energy_ha"), summary.get("energy_stderr_ha")
    return {"error_mha": None if e is None else 1e3 * (e - EXACT_LI),
            "error_bar_mha": None if se is None else 1e3 * se,
            "train_last100_error_mha": float(1e3 * (tail.mean() - EXACT_LI)) if tail.size else None,
            "step_s": float(np.median(step_time[1:] if step_time.size > 1 else step_time)),
            "iterations": float(np.mean(stats["iterations"])) if "iterations" in stats else None,
            "peak_mb": peak_mb,
            "_energy": energy, "_elapsed": _elapsed(step_time), "_step_time": step_time}


def _retime(result: dict, clean: dict | None) -> None:
    """Rescale a run's step times to the clean timing run of its solver (see the docstring):
    f = median(clean steps 2..N) / median(own steps 2..N). clean None (that run failed): the
    step time is unknown."""
    if clean is None:
        result["step_s"] = None
        return
    n = clean["_step_time"].size
    own = result["_step_time"]
    factor = (float(np.median(clean["_step_time"][1:n])) / float(np.median(own[1:n]))
              if n > 1 else 1.0)
    result["step_s"] = float(np.median(own[1:] if own.size > 1 else own)) * factor
    result["_elapsed"] = result["_elapsed"] * factor


def _elapsed(step_time: np.ndarray) -> np.ndarray:
    """Cumulative training seconds per step, the first (compiling) step counted at the median."""
    t = np.where(np.isfinite(step_time), step_time, 0.0)
    if t.size > 1:
        t = t.copy()
        t[0] = np.median(t[1:])
    return np.cumsum(t)


def error_at_wall_time(energy: np.ndarray, elapsed: np.ndarray, budget_s: float,
                       window: int = 100) -> float | None:
    """Mean training energy error (mHa) over the `window` steps ending at `budget_s` seconds.

    energy: (steps,) local-energy means in Ha; elapsed: (steps,) cumulative step time in s.
    """
    end = int(np.searchsorted(elapsed, budget_s, side="right"))
    end = max(1, min(end, energy.size))
    tail = energy[max(0, end - window):end]
    tail = tail[np.isfinite(tail)]
    return float(1e3 * (tail.mean() - EXACT_LI)) if tail.size else None


def _median(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "Li.yaml"
    config.write_text(LI_YAML)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    raw = {name: [{**r, "_seed": seed} for seed in seeds
                  if (r := _run_one(args, config, name, seed)) is not None]
           for name in args.solvers}
    if args.timing_steps > 0:
        for name, rs in raw.items():
            clean = _run_one(args, config, name, 0, timing=True)
            for r in rs:
                _retime(r, clean)
    adam_steps = [r["step_s"] for name, rs in raw.items() if name.startswith("adam") for r in rs]
    adam_step = _median(adam_steps)
    budget = min((float(r["_elapsed"][-1]) for rs in raw.values() for r in rs), default=0.0)
    rows = []
    for name, rs in raw.items():
        step = _median([r["step_s"] for r in rs])
        rows.append({"solver": name,
                     "error_mha": _median([r["error_mha"] for r in rs]),
                     "error_bar_mha": _median([r["error_bar_mha"] for r in rs]),
                     "train_last100_error_mha": _median([r["train_last100_error_mha"]
                                                         for r in rs]),
                     "step_time_vs_adam": (step / adam_step if step is not None and adam_step
                                           else None),
                     "peak_mb": _median([r["peak_mb"] for r in rs]),
                     "equal_wall_error_mha": _median([
                         error_at_wall_time(r["_energy"], r["_elapsed"], budget) for r in rs]),
                     "_budget_s": budget,
                     "_seeds": len(rs), "_step_s": step, "_runs": rs,
                     "_iterations": _median([r["iterations"] for r in rs])})
    if args.json:
        for row in rows:
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}))
    else:
        _table(rows, args)
    return 0 if all(row["_seeds"] == args.seeds for row in rows) else 1


def _table(rows, args) -> None:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    extra = f"; overrides {' '.join(args.overrides)}" if args.overrides else ""
    timing = (f"; step times rescaled to clean {args.timing_steps}-step runs"
              if args.timing_steps > 0 else "")
    print(f"Li, FermiNet (128,128,128)/(16,16,16) x 8 dets, 256 walkers{extra}, {args.steps} "
          f"steps, medians over {args.seeds} seed(s); errors vs exact {EXACT_LI} Ha{timing}")
    budget = rows[0]["_budget_s"] if rows else 0.0
    print(f"{'solver':11s} {'eval error mHa':>20s} {'train last100 mHa':>18s} "
          f"{f'at {budget:.0f} s mHa':>14s} "
          f"{'s/step':>8s} {'vs adam':>8s} {'peak MB':>9s} {'CG its':>6s} {'seeds':>5s}")
    for r in rows:
        err = (f"{fmt(r['error_mha'], '.2f')} ± {fmt(r['error_bar_mha'], '.2f')}"
               if r["error_mha"] is not None else "-")
        print(f"{r['solver']:11s} {err:>20s} {fmt(r['train_last100_error_mha'], '.2f'):>18s} "
              f"{fmt(r['equal_wall_error_mha'], '.2f'):>14s} "
              f"{fmt(r['_step_s'], '.3f'):>8s} {fmt(r['step_time_vs_adam'], '.2f'):>8s} "
              f"{fmt(r['peak_mb'], '.0f'):>9s} {fmt(r['_iterations'], '.0f'):>6s} "
              f"{r['_seeds']:>5d}")
    print("per seed: eval error ± error bar (last-100 mean), mHa")
    for r in rows:
        runs = [f"seed {x['_seed']}: {fmt(x['error_mha'], '+.2f')} ± "
                f"{fmt(x['error_bar_mha'], '.2f')} ({fmt(x['train_last100_error_mha'], '+.2f')})"
                for x in r["_runs"]]
        print(f"  {r['solver']:11s} " + "; ".join(runs))


if __name__ == "__main__":
    sys.exit(main())
