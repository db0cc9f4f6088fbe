"""The host training loop (`vmc.loop.run_loop`) of this checkout against the one of an older
commit, driving the same jitted step, side by side in one process.

Each round runs `--steps` steps with each loop (a real train.h5 writer in a temporary
folder), alternating; the first round is a warm-up and is left out. Prints ms per step of
every round, the best of each loop and their ratio.

    python scripts/bench_loop.py --base 7fdc5e4 --system Li --network benchmark --solver kfac
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import subprocess
import tempfile
import time

import jax
import numpy as np

from profile_step import _block, make_cfg, prepared_state   # noqa: E402  (sets x64)
from vmc.h5io import StatsWriter   # noqa: E402
import vmc.loop as this_loop   # noqa: E402
from vmc.train import build, make_train_step   # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def old_loop(commit: str, folder: pathlib.Path):
    """vmc/loop.py of `commit`, imported as a module of its own."""
    path = folder / "old_loop.py"
    path.write_text(subprocess.run(["git", "show", f"{commit}:vmc/loop.py"], cwd=ROOT,
                                   check=True, capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("old_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the older commit")
    p.add_argument("--system", default="Li")
    p.add_argument("--network", default="benchmark", choices=("default", "benchmark"))
    p.add_argument("--solver", default="kfac")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    cfg = make_cfg(args.system, args.network, args.solver, ("run.checkpoint_every=1000000",))
    setup = build(cfg)
    state = prepared_state(setup, 20)
    step_fn = make_train_step(setup)
    res = {"base": [], "this": []}
    with tempfile.TemporaryDirectory() as d:
        loops = {"base": old_loop(args.base, pathlib.Path(d)), "this": this_loop}
        for rnd in range(args.rounds):
            for name, module in loops.items():
                run_dir = pathlib.Path(d) / f"{name}{rnd}"
                run_dir.mkdir()
                writer = StatsWriter(run_dir / "train.h5", flush_every=20)
                kw = dict(train_key=jax.random.PRNGKey(1), cfg=cfg, run_dir=run_dir,
                          writer=writer, log=lambda m: None)
                s, *_ = module.run_loop(step_fn, state, start=0, steps=2, **kw)
                _block(s)
                tic = time.perf_counter()
                s, *_ = module.run_loop(step_fn, s, start=2, steps=2 + args.steps, **kw)
                _block(s)
                per_step = (time.perf_counter() - tic) / args.steps
                writer.close()
                if rnd:
                    res[name].append(per_step)
                print(f"round {rnd} {name}: {1e3 * per_step:.1f} ms/step", flush=True)
    best = {k: min(v) for k, v in res.items()}
    print(f"best: {args.base} {1e3 * best['base']:.1f} ms, this checkout "
          f"{1e3 * best['this']:.1f} ms, ratio {best['this'] / best['base']:.3f} "
          f"(medians {1e3 * np.median(res['base']):.1f} / {1e3 * np.median(res['this']):.1f})")


if __name__ == "__main__":
    main()
