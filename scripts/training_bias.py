"""Is the training energy an unbiased estimate of the energy of the parameters it is logged
with? (issue #14: N's training tail sat 28.5 ± 4.4 mHa below its own evaluation.)

From a trained run's last checkpoint, continue training for --steps steps at a constant
learning rate (the run's own at its last step unless --lr), once with the run's Metropolis
moves per step and once with --moves-many, each run evaluated with frozen parameters at its
end (`eval.steps`, fresh burn-in). For each it prints the training mean of the per-step
mean E_L (steps 50 on, reblocked), the mean of the per-step medians, their difference, and the
frozen-parameter evaluation of the final parameters:

    python scripts/training_bias.py runs/ladder/N/defaults/train systems/N.yaml --steps 500

If each update lowers E_L on the walkers it was computed from and the next step's walkers
are still close to those (too few moves per step), the training mean sits below the frozen
evaluation and the gap shrinks with more moves.
Measured for N at 4000 steps (README "Training energies"): -16.9 ± 6.5 mHa at 10 moves,
-3.2 ± 4.8 at 50. The starting point's own evaluation is the newest group of the run's
eval.h5 (the run must have been evaluated at its newest checkpoint); evaluations use the
continued run's own sampler.moves.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmc import reblock  # noqa: E402
from vmc.analysis import load_run  # noqa: E402


def newest_evaluation(run) -> tuple[float, float]:
    """(mean, reblocked stderr) in Ha of the newest evaluation group of a run directory."""
    r = reblock.reblock(load_run(run).evals[-1].energy)
    return r.mean, r.stderr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="trained run directory (checkpoints/, train.h5, eval.h5)")
    p.add_argument("system", help="its molecule file, e.g. systems/N.yaml")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=None, help="default: the run's last lr")
    p.add_argument("--moves-many", type=int, default=50)
    p.add_argument("--out", default="runs/training_bias")
    a = p.parse_args(argv)
    run, out = pathlib.Path(a.run), pathlib.Path(a.out)
    start = load_run(run)
    lr = a.lr if a.lr is not None else float(start.stats["lr"][-1])
    moves = int(start.config["sampler"]["moves"])
    rows = []
    e0, s0 = newest_evaluation(run)
    print(f"start: {run} evaluated {e0:.6f} Ha ± {s0 * 1e3:.2f} mHa; continuing {a.steps} "
          f"steps at lr {lr:.4g} (constant)", flush=True)
    for m in (moves, a.moves_many):
        d = out / f"moves{m}"
        cmd = [sys.executable, "-m", "vmc.cli", "run", a.system, "--out", str(d),
               "--init-from", str(run), "--set", f"optim.steps={a.steps}",
               "--set", f"optim.lr={lr}", "--set", "optim.lr_decay_steps=1e12",
               "--set", f"sampler.moves={m}", "--set", f"eval.steps={a.eval_steps}"]
        print("vmc " + " ".join(cmd[3:]), flush=True)
        if subprocess.call(cmd, stdout=subprocess.DEVNULL) != 0:
            print(f"moves {m}: the run failed (see {d}/run.log)")
            return 1
        stats = load_run(d).stats
        e, med = stats["energy"][50:], stats["median"][50:]
        r = reblock.reblock(e)
        ev, es = newest_evaluation(d)
        rows.append((m, r.mean, r.stderr, float(np.mean(med)), float(np.mean(e - med)), ev, es))
    print(f"\n{'moves':>5}  {'train mean (Ha)':>16} {'±mHa':>5}  {'mean median':>12}  "
          f"{'mean-med mHa':>12}  {'eval final (Ha)':>15} {'±mHa':>5}  {'train-eval mHa':>15}")
    for m, tm, ts, md, dm, ev, es in rows:
        gap, gs = (tm - ev) * 1e3, np.hypot(ts, es) * 1e3
        print(f"{m:5d}  {tm:16.6f} {ts * 1e3:5.2f}  {md:12.6f}  {dm * 1e3:12.1f}  "
              f"{ev:15.6f} {es * 1e3:5.2f}  {gap:+9.1f} ± {gs:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
