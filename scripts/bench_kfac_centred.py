"""Cosine of uncentred and centred KFAC (and kfac-cg) directions to the exact SR direction.

One process per call. For each system: the benchmark FermiNet (`--hidden-one`,
`--hidden-two`, `--determinants`; default 3 × 128, 3 × 16, 8 determinants), `--walkers`
walkers, float32 network, no pretraining; burn-in, then `--train` steps of the `sample`
solver (exact SR) so that the batches are realistic. The next `--warm` + `--batches` steps
of that same run are the batches: on each, the KFAC statistics are accumulated into two
`KfacState`s (decay `optim.kfac_cov_ema` = 0.95, the default, and 0: this batch only) and,
on the last `--batches` of them, compared with the exact damped SR direction of the batch,
d* = Ōᵀ(ŌŌᵀ + λI)⁻¹ε (float64 sample-space solve, λ = optim.damping):

- KFAC uncentred, d = M⁻¹ĝ (what `kfac` does today);
- KFAC centred, d = (M − c m mᵀ)⁻¹ĝ per Dense layer (Sherman–Morrison with the guard,
  `optim.kfac_centring` walker: c = 1, use: c = 1/S, fit: c fitted to F along M⁻¹m);
- kfac-cg: PCG on the exact F + λI from x₀ = M⁻¹ĝ, preconditioned by either, after
  `--cg-iters` iterations (products with the formed Ō, float64).

Also per batch: the guard's fall-backs (layers with δ = 1 − c mᵀM⁻¹m ≤ guard) and, per layer
(ema 0), |m|²/tr F_layer, the share of the mean term in the uncentred block. Printed as
markdown: the median (and quartiles) of each cosine over the batches.

    python scripts/bench_kfac_centred.py                     # Li and LiH, 200 + 20 + 20 steps
    python scripts/bench_kfac_centred.py --systems Li --train 50 --hidden-one 32 32
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from vmc.config import config_from_dict  # noqa: E402
from vmc.optim.cg import pcg  # noqa: E402
from vmc.optim.kfac import (CENTRED_GUARD, FIT_GUARD, accumulate,  # noqa: E402
                            guard_for, init_state, mean_weights, n_fallbacks,
                            precondition)
from vmc.optim.kfac_capture import (discover_layers, make_statistics,  # noqa: E402
                                    merge_params, split_params)
from vmc.optim.kfac_cosine import cosine  # noqa: E402
from vmc.optim.sr import (JacobianBlocks, centred_energies, clip_local_energy,  # noqa: E402
                          float64_ravel, jacobian_blocks)
from vmc.stages import burn_in  # noqa: E402
from vmc.train import build, init_state as train_init, make_train_step  # noqa: E402

F64 = jnp.float64
ROOT = pathlib.Path(__file__).resolve().parents[1]
EMAS = (0.95, 0.0)
CENTRINGS = ("walker", "use", "fit")   # 'none' is the uncentred direction of either state


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _config(system, args):
    data = yaml.safe_load((ROOT / "systems" / f"{system}.yaml").read_text())
    data.pop("reference", None)
    data.update({"ansatz": {"hidden_one": list(args.hidden_one),
                            "hidden_two": list(args.hidden_two),
                            "determinants": args.determinants},
                 "sampler": {"walkers": args.walkers},
                 "optim": {"solver": "sample"}, "pretrain": {"steps": 0},
                 "run": {"seed": args.seed}})
    return config_from_dict(data, name=system)


def batches(system, args):
    """(setup, list of (params, walkers, e_l)): the batches of the `--warm` + `--batches`
    steps after `--train` steps of `sample` (parameters before each update)."""
    setup = build(_config(system, args))
    key = jax.random.PRNGKey(args.seed + 1)
    state = burn_in(setup, train_init(setup, jax.random.PRNGKey(args.seed)), key, log)
    step = make_train_step(setup)
    e_l_fn = jax.jit(setup.batched_local_energy)
    out, t0 = [], time.perf_counter()
    total = args.train + args.warm + args.batches
    for t in range(total):
        new, stats = step(state, jax.random.fold_in(key, 10_000 + t), t)
        if t >= args.train:
            walkers = new.mcmc.walkers
            out.append((state.params, walkers, e_l_fn(state.params, walkers)))
        state = new
        if t % 50 == 0 or t == total - 1:
            log(f"{system}: step {t}, E = {float(stats.energy):.5f}, "
                f"{time.perf_counter() - t0:.0f} s")
    return setup, out


def measure(system, setup, data, args):
    """Per batch: cosines, fall-backs and |m|²/tr F per layer (ema 0)."""
    cfg = setup.cfg.optim
    log_psi = setup.ansatz.log_psi
    module = setup.ansatz.module
    n_e = int(module.n_up) + int(module.n_down)
    params0 = data[0][0]
    layers = discover_layers(log_psi, params0, n_e)
    stats_fn = make_statistics(log_psi, layers)
    ravel, unravel = float64_ravel(params0)

    @jax.jit
    def batch(params, walkers, e_l):
        """Statistics, O (per-leaf blocks), d* and {layer: |m|²/tr F_layer} of one batch."""
        eps = centred_energies(clip_local_energy(e_l.astype(F64), cfg.clip)[0])
        stats = stats_fn(params, walkers, eps)
        blocks = jacobian_blocks(log_psi, params, walkers)
        o = JacobianBlocks.build(blocks)
        t = o.gram() + cfg.damping * jnp.eye(o.n_w, dtype=F64)
        exact = o.rmatvec(jax.scipy.linalg.cho_solve(
            jax.scipy.linalg.cho_factor(t, lower=True), eps))
        idx = split_params(layers, unravel(jnp.arange(exact.shape[0], dtype=F64)))[0]
        var = _column_variances(o)     # diag F: tr F_layer = Σ over the layer's columns
        share = {n: jnp.sum(stats.mean[n] ** 2) / jnp.sum(var[i.astype(jnp.int32)])
                 for n, i in idx.items()}
        return stats, blocks, exact, share

    @functools.partial(jax.jit, static_argnums=4)
    def directions(state, stats, blocks, exact, guard):
        o = JacobianBlocks.build(blocks)
        g = ravel(merge_params(layers, *stats.grad))
        out = {}
        for centred in (False, True):
            d = ravel(merge_params(layers, *precondition(state, stats.grad, centred, guard)))
            out[("kfac", centred)] = cosine(d, exact)
            m_inv = lambda r, c=centred: ravel(merge_params(  # noqa: E731
                layers, *precondition(state, split_params(layers, unravel(r)), c, guard)))
            mv = lambda v: o.rmatvec(o.matvec(v)) + cfg.damping * v  # noqa: E731
            res = pcg(mv, g, d, args.cg_iters, 0.0, m_inv)
            out[("kfac-cg", centred)] = cosine(res.x, exact)
        return out

    keys = [(ema, c) for ema in EMAS for c in CENTRINGS]
    states = {k: init_state(layers, params0) for k in keys}
    weights = {c: mean_weights(layers, c) for c in CENTRINGS}
    acc = jax.jit(lambda st, s, e, c: accumulate(st, s, cfg.__class__(
        **{**cfg.__dict__, "kfac_cov_ema": e}), weights[c]), static_argnums=(2, 3))
    rows, shares, falls, deltas = [], [], {k: [] for k in keys}, []
    t0 = time.perf_counter()
    stats_only = jax.jit(lambda p, w, e: stats_fn(p, w, centred_energies(
        clip_local_energy(e.astype(F64), cfg.clip)[0])))
    for k, (params, walkers, e_l) in enumerate(data):
        if k < args.warm:      # these batches only fill the moving averages
            stats = stats_only(params, walkers, e_l)
            for key in keys:
                states[key] = acc(states[key], stats, *key)
            continue
        stats, blocks, exact, share = batch(params, walkers, e_l)
        for key in keys:
            states[key] = acc(states[key], stats, *key)
        row = {}
        for (ema, c) in keys:
            cos = directions(states[(ema, c)], stats, blocks, exact, guard_for(c))
            for (kind, centred), v in cos.items():
                row[(kind, c if centred else "none", ema)] = float(v)
            falls[(ema, c)].append(int(n_fallbacks(states[(ema, c)], guard_for(c))))
        rows.append(row)
        shares.append({n: float(v) for n, v in share.items()})
        deltas.append({(n, key): float(states[key].denominator[n]) for key in keys
                       for n in states[key].denominator})
        log(f"{system} batch {k - args.warm}: " + ", ".join(
            f"{kind}/{c}@{ema}: {v:.3f}" for (kind, c, ema), v in row.items())
            + f" ({time.perf_counter() - t0:.0f} s)")
    shares = (shares, deltas)
    return layers, rows, shares, falls


def _column_variances(o):
    """diag(ŌᵀŌ) (p,) float64: per-parameter variance of O over the walkers."""
    cols = []
    for blk in o.blocks:
        b = blk.astype(F64)
        b = b - jnp.mean(b, axis=0)
        cols.append(jnp.sum(b * b, axis=0) / o.n_w)
    return jnp.concatenate(cols)


def table(system, setup, layers, rows, shares, falls, args):
    p = sum(int(x.size) for x in jax.tree_util.tree_leaves(setup.ansatz.init(
        jax.random.PRNGKey(0))))
    lines = [f"\n{system}: p = {p}, n_w = {args.walkers}, λ = {setup.cfg.optim.damping:g}, "
             f"{len(rows)} consecutive batches after {args.train} `sample` steps "
             f"(+{args.warm} to fill the EMA); guard δ ≤ {CENTRED_GUARD:g} "
             f"(fit: {FIT_GUARD:g})\n",
             "| direction | centring | factors | cos median | quartiles | guard fall-backs "
             "(layer-batches) |", "|---|---|---|---|---|---|"]
    n_layers = len(layers)
    for kind in ("kfac", "kfac-cg"):
        for ema in EMAS:
            for c in ("none",) + CENTRINGS:
                v = np.array([r[(kind, c, ema)] for r in rows])
                q1, med, q3 = np.percentile(v, [25, 50, 75])
                its = f" ({args.cg_iters} its)" if kind == "kfac-cg" else ""
                fb = f"{sum(falls[(ema, c)])} / {n_layers * len(rows)}" if c != "none" else ""
                lines.append(f"| {kind}{its} | {c} | EMA {ema:g} | {med:.3f} | "
                             f"{q1:.3f}–{q3:.3f} | {fb} |")
    shares, deltas = shares
    lines.append("\n| layer | uses S | \\|m\\|²/tr F | " + " | ".join(
        f"δ {c}, EMA {ema:g}" for ema in EMAS for c in CENTRINGS) + " |\n|---|---|---|"
        + "---|" * (len(EMAS) * len(CENTRINGS)))
    for ly in layers:
        d = [np.median([x[(ly.name, (ema, c))] for x in deltas])
             for ema in EMAS for c in CENTRINGS]
        lines.append(f"| {ly.name} | {ly.uses} | "
                     f"{np.median([s[ly.name] for s in shares]):.2f} | "
                     + " | ".join(f"{x:.3g}" for x in d) + " |")
    lines.append("(medians over the batches; |m|²/tr F of the batch's own F)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=["Li", "LiH"])
    ap.add_argument("--hidden-one", type=int, nargs="+", default=[128, 128, 128])
    ap.add_argument("--hidden-two", type=int, nargs="+", default=[16, 16, 16])
    ap.add_argument("--determinants", type=int, default=8)
    ap.add_argument("--walkers", type=int, default=256)
    ap.add_argument("--train", type=int, default=200, help="sample-solver steps first")
    ap.add_argument("--warm", type=int, default=20, help="batches that only fill the EMA")
    ap.add_argument("--batches", type=int, default=20, help="measured batches")
    ap.add_argument("--cg-iters", type=int, default=10, help="kfac-cg iterations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for system in args.systems:
        setup, data = batches(system, args)
        layers, rows, shares, falls = measure(system, setup, data, args)
        print(table(system, setup, layers, rows, shares, falls, args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
