"""Time per SR update and F-products per update against the batch size, for sample, cg,
nystrom-cg and kfac-cg (issue #16), side by side in one process.

A small network (He, default FermiNet unless `--hidden-one/--hidden-two/--determinants`),
float32 as in a default run: `--train` steps of `sample` at 256 walkers give the parameters;
for each n_w in `--walkers`, n_w walkers are burnt in with those parameters (`--burn-in`
steps) and two consecutive batches are drawn. Each solver (its defaults: damping 1e-3,
cg_maxiter 100, cg_tol 1e-4, ℓ = 16 rebuilt every update) is warm-started by an update on
the first batch, then its update on the second batch is timed, compiled, the solvers
interleaved round by round (`--repeats` rounds, median), so load drift on the shared CPU
hits all alike. "residual" is ‖ĝ − (F + λI)d‖/‖ĝ‖ where CG stopped (at the tolerance or the
100-iteration cap).

F-products per update: cg: its + 2 (initial residual, curvature of the norm constraint);
nystrom-cg: its + 2 + ℓ/k (the sketch's ℓ products amortised over its k-update reuse);
kfac-cg: its + 2 + ℓ (the product that scales its KFAC start also gives the initial
residual; a fresh sketch every update; plus one pass for the KFAC statistics); sample
forms Ō (n_w × p) instead (an n_w × n_w Cholesky, O(n_w² p + n_w³)).

    python scripts/bench_solvers_scaling.py                        # He, 256 1024 4096
    python scripts/bench_solvers_scaling.py --walkers 256 1024 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from vmc.config import config_from_dict  # noqa: E402
from vmc.optim import make_optimizer  # noqa: E402
from vmc.stages import burn_in  # noqa: E402
from vmc.train import build, init_state, make_burn_in_step, make_train_step  # noqa: E402

SOLVERS = ("sample", "cg", "nystrom-cg", "kfac-cg")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _config(args, walkers, solver="sample"):
    ansatz = {}
    if args.hidden_one:
        ansatz["hidden_one"] = list(args.hidden_one)
    if args.hidden_two:
        ansatz["hidden_two"] = list(args.hidden_two)
    if args.determinants:
        ansatz["determinants"] = args.determinants
    return config_from_dict({"atoms": [{"symbol": "He", "position": [0.0, 0.0, 0.0]}],
                             "ansatz": ansatz, "sampler": {"walkers": walkers},
                             "optim": {"solver": solver}, "pretrain": {"steps": 0},
                             "run": {"seed": args.seed}}, name="He")


def trained_params(args):
    """Parameters after burn-in and `--train` sample steps at 256 walkers."""
    setup = build(_config(args, 256))
    key = jax.random.PRNGKey(args.seed + 1)
    state = burn_in(setup, init_state(setup, jax.random.PRNGKey(args.seed)), key, log)
    step = make_train_step(setup)
    for t in range(args.train):
        state, stats = step(state, jax.random.fold_in(key, 10_000 + t), t)
    log(f"He: {args.train} sample steps, E = {float(stats.energy):.5f}")
    return state.params


def two_batches(args, params, n_w):
    """Setup and two consecutive (walkers, e_l) batches of n_w walkers for `params`."""
    setup = build(_config(args, n_w))
    mcmc = init_state(setup, jax.random.PRNGKey(args.seed + n_w)).mcmc
    burn = make_burn_in_step(setup)
    key = jax.random.PRNGKey(args.seed + 2)
    e_l_fn = jax.jit(setup.batched_local_energy)
    out = []
    for t in range(args.burn_in + 2):
        mcmc, _ = burn(params, mcmc, jax.random.fold_in(key, t))
        if t >= args.burn_in:
            out.append((mcmc.walkers, e_l_fn(params, mcmc.walkers)))
    return setup, out


def measure(args, params, n_w):
    setup, ((w0, e0), (w1, e1)) = two_batches(args, params, n_w)
    fns = []
    for solver in SOLVERS:
        cfg = _config(args, n_w, solver).optim
        kw = {"module": setup.ansatz.module} if solver == "kfac-cg" else {}
        opt = make_optimizer(cfg, setup.ansatz.log_psi, **kw)
        upd = jax.jit(opt.update)
        _, st, _ = upd(params, opt.init(params), w0, e0, 0)
        out = jax.block_until_ready(upd(params, st, w1, e1, 1))
        fns.append((solver, cfg, upd, st, int(out[2].iterations), float(out[2].residual)))
    times = [[] for _ in fns]
    for _ in range(args.repeats):
        for i, (_, _, upd, st, _, _) in enumerate(fns):
            t = time.perf_counter()
            jax.block_until_ready(upd(params, st, w1, e1, 1))
            times[i].append(time.perf_counter() - t)
    rows = []
    for (solver, cfg, _, _, its, resid), ts in zip(fns, times):
        if solver == "sample":
            prods = "Ō formed"
        elif solver == "nystrom-cg":
            prods = f"{its + 2 + cfg.nystrom_rank / cfg.nystrom_refresh_every:g}"
        elif solver == "kfac-cg":      # a fresh sketch every update
            prods = f"{its + 2 + cfg.nystrom_rank}"
        else:
            prods = f"{its + 2}"
        rows.append((n_w, solver, its, resid, prods, float(np.median(ts))))
        log(f"  n_w = {n_w}, {solver}: {its} its, {prods} products, "
            f"{1e3 * np.median(ts):.0f} ms")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--walkers", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--train", type=int, default=100, help="sample steps at 256 walkers")
    ap.add_argument("--burn-in", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden-one", type=int, nargs="*")
    ap.add_argument("--hidden-two", type=int, nargs="*")
    ap.add_argument("--determinants", type=int)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    params = trained_params(args)
    p = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    rows = []
    for n_w in args.walkers:
        rows += measure(args, params, n_w)
    lines = [f"He: p = {p}, float32 network, one update per solver (defaults, warm start), "
             f"median of {args.repeats} interleaved rounds\n",
             "| n_w | solver | CG its | residual | F-products | ms/update |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {s} | {i if s != 'sample' else '—'} | "
              f"{f'{r:.1e}' if s != 'sample' else 'exact'} | {pr} | {1e3 * t:.0f} |"
              for n, s, i, r, pr, t in rows]
    best = {}
    for n, s, _, _, _, t in rows:
        if n not in best or t < best[n][1]:
            best[n] = (s, t)
    lines.append("\nfastest per n_w: " + ", ".join(f"{n}: {s}" for n, (s, _) in best.items()))
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
