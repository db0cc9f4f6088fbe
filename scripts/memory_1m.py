"""Peak host memory of one training step per SR solver for a FermiNet with >= 1M parameters.

Each solver runs in its own subprocess (build, init, one jit-compiled train step: Metropolis
moves, forward-Laplacian local energies, optimizer update; then a second, timed step) and
reports its peak resident set size (getrusage ru_maxrss, also checked by the parent through
wait4). `adam` is the baseline: sampler + local energy + one gradient. Only `dense` would
form a p × p matrix (p² × 8 bytes: listed, not run).

    python scripts/memory_1m.py                       # sample cg kfac kfac-cg spring (+ adam)
    python scripts/memory_1m.py --solvers cg --walkers 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SOLVERS = ("adam", "sample", "cg", "kfac", "kfac-cg", "spring")


def _parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    p.add_argument("--atom", default="Li", help="a small atom (spin = Z mod 2)")
    p.add_argument("--hidden-one", default="384,384,384,384")
    p.add_argument("--hidden-two", default="32,32,32,32")
    p.add_argument("--determinants", type=int, default=16)
    p.add_argument("--walkers", type=int, default=256)
    p.add_argument("--moves", type=int, default=2, help="Metropolis moves per step")
    p.add_argument("--cg-maxiter", type=int, default=20)
    p.add_argument("--x64", action="store_true", help="float64 network (default float32)")
    p.add_argument("--json", action="store_true", help="one JSON object per solver")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def _config(args, solver):
    from vmc.config import config_from_dict
    from vmc.system import ATOMIC_NUMBER
    data = {"atoms": [{"symbol": args.atom, "position": [0.0, 0.0, 0.0]}],
            "spin": ATOMIC_NUMBER[args.atom] % 2}
    sets = (f"optim.solver={solver}", f"ansatz.hidden_one=[{args.hidden_one}]",
            f"ansatz.hidden_two=[{args.hidden_two}]",
            f"ansatz.determinants={args.determinants}", f"sampler.walkers={args.walkers}",
            f"sampler.moves={args.moves}", f"optim.cg_maxiter={args.cg_maxiter}",
            f"run.x64={str(args.x64).lower()}", "pretrain.steps=0")
    return config_from_dict(data, name=args.atom, overrides=sets)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _child(args) -> None:
    from vmc.cpu_env import configure_process
    configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread
    import jax
    jax.config.update("jax_enable_x64", True)
    from vmc.ansatz import count_params
    from vmc.train import build, init_state, make_train_step
    cfg = _config(args, args.child)
    setup = build(cfg)
    state = init_state(setup, jax.random.PRNGKey(0))
    rss_init = _rss_mb()
    step = make_train_step(setup)
    t0 = time.perf_counter()
    state, stats = step(state, jax.random.PRNGKey(1), 0)
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    state, stats = step(state, jax.random.PRNGKey(2), 1)
    jax.block_until_ready(state)
    t2 = time.perf_counter()
    print(json.dumps({"solver": args.child, "n_params": count_params(state.params),
                      "walkers": args.walkers, "rss_after_init_mb": round(rss_init, 1),
                      "peak_rss_mb": round(_rss_mb(), 1),
                      "first_step_s": round(t1 - t0, 2), "step_s": round(t2 - t1, 2),
                      "iterations": float(stats.iterations),
                      "energy": float(stats.energy)}), flush=True)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        _child(args)
        return 0
    rows = []
    for solver in args.solvers:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", solver,
               "--atom", args.atom, "--hidden-one", args.hidden_one,
               "--hidden-two", args.hidden_two, "--determinants", str(args.determinants),
               "--walkers", str(args.walkers), "--moves", str(args.moves),
               "--cg-maxiter", str(args.cg_maxiter)] + (["--x64"] if args.x64 else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        line = next((l for l in out.splitlines() if l.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            print(f"{solver}: failed with exit code {proc.returncode}", file=sys.stderr)
            continue
        row = json.loads(line)
        row["peak_rss_mb_wait4"] = round(usage.ru_maxrss / 1024.0, 1)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{solver:8s} p={row['n_params']:>9,d}  n_w={row['walkers']}  "
                  f"peak RSS {row['peak_rss_mb']:8.1f} MB "
                  f"(after init {row['rss_after_init_mb']:.1f})  step {row['step_s']:.2f} s "
                  f"(first {row['first_step_s']:.1f} s)", flush=True)
    if rows and not args.json:
        p = rows[0]["n_params"]
        print(f"dense    would need a p x p float64 matrix: {p * p * 8 / 2 ** 30:,.0f} GiB "
              f"(not run)")
    return 0 if len(rows) == len(args.solvers) else 1


if __name__ == "__main__":
    sys.exit(main())
