"""CG iterations and time per SR solve: plain CG, kfac-cg and nystrom-cg, side by side.

One process, one equilibrated batch per system (default FermiNet, 256 walkers, float32
network as in a default run): burn-in, then `--equil` training steps with the `sample`
solver; the batch is the last step's (parameters before the update, the walkers it sampled,
their E_L, clipped as in training). On that batch, (F + λI) d = ĝ is solved from x₀ = 0 to
relative residual `--tol` for λ = 1e-3 and 1e-1 with:

- plain CG;
- KFAC's direction as the start, x₀ = α M⁻¹ĝ (α minimises the quadratic along it; the
  batch's own Kronecker factors), with no preconditioner and with a fresh ℓ = 16 sketch
  (today's `kfac-cg`); "kfac-cg, M⁻¹-preconditioned" is the earlier `kfac-cg` (PCG with
  KFAC's M⁻¹ as the preconditioner from x₀ = M⁻¹ĝ), kept here for comparison;
- nystrom-cg's preconditioner from F's exact top-ℓ eigenpairs (SVD of Ō);
- the randomized Nyström sketch (`vmc.optim.nystrom.nystrom_sketch`) of this batch ("fresh"),
  of the batch k steps earlier ("k steps old": earlier parameters and walkers, as a reused
  sketch is in training), and of a subset of this batch's walkers ("64 walkers").

"its" counts PCG iterations (one F product each, plus one for the initial residual); "ms"
is the time per solve, compiled, median of `--repeats`. The sketch's own cost (ℓ products,
"sketch ms") is listed per ℓ. The update table times whole optimizer updates (cg against
nystrom-cg at each ℓ and kfac-cg, defaults, warm-started from an update on the previous
batch, the sketch built inside the update) interleaved round by round. Then `--train`
steps of training of He with cg, nystrom-cg (defaults), nystrom-cg reusing its sketch for
10 steps and kfac-cg (defaults), same seed: mean training energy of the last quarter, mean
PCG iterations and seconds per step.

    python scripts/bench_pcg.py                          # He
    python scripts/bench_pcg.py --systems He Li --train 0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vmc.config import config_from_dict  # noqa: E402
from vmc.optim.cg import linearize_fisher, pcg  # noqa: E402
from vmc.optim.kfac import (accumulate, mean_weights,  # noqa: E402
                            precondition)
from vmc.optim.kfac import init_state as kfac_init_state  # noqa: E402
from vmc.optim.kfac_capture import (discover_layers, make_statistics,  # noqa: E402
                                    merge_params, split_params)
from vmc.optim.nystrom import (eigenpairs_from_jacobian, fisher_block,  # noqa: E402
                               nystrom_sketch)
from vmc.optim.sr import (centred_energies, centred_jacobian,  # noqa: E402
                          clip_local_energy, float64_ravel)
from vmc.stages import burn_in  # noqa: E402
from vmc.train import build, init_state, make_train_step  # noqa: E402

F64 = jnp.float64
SYSTEMS = {"He": ([{"symbol": "He", "position": [0.0, 0.0, 0.0]}], 0),
           "Li": ([{"symbol": "Li", "position": [0.0, 0.0, 0.0]}], 1)}
RANKS = (16, 32, 64, 128)
DAMPINGS = (1e-3, 1e-1)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _config(system, solver="sample", seed=0, **optim):
    atoms, spin = SYSTEMS[system]
    return config_from_dict({"atoms": atoms, "spin": spin, "optim": {"solver": solver, **optim},
                             "pretrain": {"steps": 0}, "run": {"seed": seed}}, name=system)


def _burned_in(setup, seed):
    """(initial state after `sampler.burn_in` fixed-parameter steps, the burn-in key)."""
    key = jax.random.PRNGKey(seed + 1)
    return burn_in(setup, init_state(setup, jax.random.PRNGKey(seed)), key, log), key


def batches(system, equil, olds, seed=0):
    """Setup and {age: (params, walkers, e_l)} of the last step (age 0), the one before (1)
    and `olds` steps earlier."""
    setup = build(_config(system))
    state, key = _burned_in(setup, seed)
    step = make_train_step(setup)
    e_l_fn = jax.jit(setup.batched_local_energy)
    keep = {}
    for t in range(equil):
        new, stats = step(state, jax.random.fold_in(key, 10_000 + t), t)
        age = equil - 1 - t
        if age in olds or age in (0, 1):
            keep[age] = (state.params, new.mcmc.walkers,
                         e_l_fn(state.params, new.mcmc.walkers))
        state = new
    log(f"{system}: {equil} steps, E = {float(stats.energy):.5f}")
    return setup, keep


def _median_time(fn, repeats):
    out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return out, 1e3 * float(np.median(times))


def kfac_inverse(setup, params, walkers, eps, damping):
    """r (p,) -> M⁻¹r (p,) float64, M the batch's own damped Kronecker/diagonal matrix
    (uncentred, no moving average: the first KFAC update's)."""
    log_psi, module = setup.ansatz.log_psi, setup.ansatz.module
    cfg = dataclasses.replace(setup.cfg.optim, solver="kfac", damping=damping)
    layers = discover_layers(log_psi, params, int(module.n_up) + int(module.n_down))
    stats = make_statistics(log_psi, layers)(params, walkers, eps, None)
    state = accumulate(kfac_init_state(layers, params), stats, cfg,
                       mean_weights(layers, "none"), track_mean=False)
    ravel, unravel = float64_ravel(params)
    return lambda r: ravel(merge_params(layers, *precondition(
        state, split_params(layers, unravel(r)))))


def solve_table(system, setup, keep, olds, tol, repeats, subset):
    log_psi = setup.ansatz.log_psi
    params, walkers, e_l = keep[0]
    clip = setup.cfg.optim.clip
    eps = centred_energies(clip_local_energy(e_l.astype(F64), clip)[0])
    p = sum(x.size for x in jax.tree_util.tree_leaves(params))
    n_w = walkers.shape[0]
    l_max = max(RANKS)

    @jax.jit
    def solve(u, lam, damping):
        """PCG from 0; u (p, l_max) zero-padded, lam (l_max,) padded with its last value."""
        op = linearize_fisher(log_psi, params, walkers, damping)
        factor = (lam[-1] + damping) / (lam + damping) - 1.0
        res = pcg(op.matvec, op.gradient(eps), jnp.zeros((p,), F64), 5000, tol,
                  lambda r: r + u @ (factor * (u.T @ r)))
        return res.iterations, res.residual

    @jax.jit
    def solve_from_kfac(u, lam, damping, d_kfac):
        """As `solve`, from x₀ = α M⁻¹ĝ, α minimising the quadratic along M⁻¹ĝ (one more
        F-product, counted in the iterations)."""
        op = linearize_fisher(log_psi, params, walkers, damping)
        b = op.gradient(eps)
        alpha = jnp.dot(b, d_kfac) / jnp.dot(d_kfac, op.matvec(d_kfac))
        factor = (lam[-1] + damping) / (lam + damping) - 1.0
        res = pcg(op.matvec, b, alpha * d_kfac, 5000, tol,
                  lambda r: r + u @ (factor * (u.T @ r)))
        return res.iterations + 1, res.residual

    def padded(u, lam):
        ell = u.shape[1]
        return (jnp.pad(u, ((0, 0), (0, l_max - ell))),
                jnp.concatenate([lam, jnp.full((l_max - ell,), lam[-1])]))

    sketch_fns = {}

    def sketch(batch, ell, mask=None):
        if ell not in sketch_fns:
            def fn(prm, w, m, omega):
                op = linearize_fisher(log_psi, prm, w, 0.0, m)
                return nystrom_sketch(fisher_block(op, 0.0), omega)
            sketch_fns[ell] = jax.jit(fn)
        prm, w, _ = batch
        m = jnp.ones((n_w,), bool) if mask is None else mask
        omega = jax.random.normal(jax.random.PRNGKey(ell), (p, ell), F64)
        return _median_time(lambda: sketch_fns[ell](prm, w, m, omega), repeats)

    rows = []   # (label, {damping: (its, ms)})

    def run(label, u, lam):
        cells = {}
        for damping in DAMPINGS:
            (its, res), ms = _median_time(lambda: solve(u, lam, damping), repeats)
            cells[damping] = (int(its), ms, float(res))
        rows.append((label, cells))
        log(f"  {label}: " + ", ".join(f"λ={d:g}: {c[0]} its {c[1]:.0f} ms"
                                      for d, c in cells.items()))

    zero_u, zero_l = jnp.zeros((p, l_max), F64), jnp.ones((l_max,), F64)
    run("plain CG", zero_u, zero_l)

    def kfac_direction(damping):
        m_inv = kfac_inverse(setup, params, walkers, eps, damping)
        return m_inv(linearize_fisher(log_psi, params, walkers, damping).gradient(eps))

    d_kfac = {d: jax.jit(lambda d=d: kfac_direction(d))() for d in DAMPINGS}

    @functools.partial(jax.jit, static_argnums=0)
    def solve_kfac_preconditioned(damping):
        """The earlier kfac-cg: PCG preconditioned by M⁻¹ from x₀ = M⁻¹ĝ (timed with the
        KFAC statistics pass that builds M)."""
        m_inv = kfac_inverse(setup, params, walkers, eps, damping)
        op = linearize_fisher(log_psi, params, walkers, damping)
        b = op.gradient(eps)
        res = pcg(op.matvec, b, m_inv(b), 5000, tol, m_inv)
        return res.iterations, res.residual

    def run_from_kfac(label, u, lam):
        cells = {}
        for damping in DAMPINGS:
            (its, res), ms = _median_time(
                lambda: solve_from_kfac(u, lam, damping, d_kfac[damping]), repeats)
            cells[damping] = (int(its), ms, float(res))
        rows.append((label, cells))
        log(f"  {label}: " + ", ".join(f"λ={d:g}: {c[0]} its {c[1]:.0f} ms"
                                      for d, c in cells.items()))

    run_from_kfac("plain CG from x₀ = αM⁻¹ĝ (+1 product)", zero_u, zero_l)
    cells = {}
    for damping in DAMPINGS:
        (its, res), ms = _median_time(lambda: solve_kfac_preconditioned(damping), repeats)
        cells[damping] = (int(its), ms, float(res))
    rows.append(("kfac-cg, M⁻¹-preconditioned (earlier kfac-cg; x₀ = M⁻¹ĝ)", cells))
    log(f"  kfac-cg, M⁻¹-preconditioned: {cells}")
    obar = jax.jit(lambda: centred_jacobian(log_psi, params, walkers)[0])()
    u_all, lam_all = eigenpairs_from_jacobian(obar, l_max)
    del obar
    for ell in RANKS:
        run(f"exact eigenpairs, ℓ = {ell}", *padded(u_all[:, :ell], lam_all[:ell]))
    sketch_ms = {}
    sub = jnp.arange(n_w) < subset
    for ell in RANKS:
        (u, lam), sketch_ms[ell] = sketch(keep[0], ell)
        run(f"sketch, fresh, ℓ = {ell}", *padded(u, lam))
        if ell == min(RANKS):
            run_from_kfac(f"sketch, fresh, ℓ = {ell}, from x₀ = αM⁻¹ĝ (+1 product)",
                          *padded(u, lam))
        for age in olds:
            (u, lam), _ = sketch(keep[age], ell)
            run(f"sketch, {age} steps old, ℓ = {ell}", *padded(u, lam))
        if ell < subset:
            (u, lam), _ = sketch(keep[0], ell, sub)
            run(f"sketch, fresh, {subset} walkers, ℓ = {ell}", *padded(u, lam))
    head = (f"{system}: p = {p}, n_w = {n_w}, tolerance {tol:g}, "
            f"x₀ = 0 unless the row says otherwise\n\n"
            f"| preconditioner | its λ=1e-3 | ms λ=1e-3 | its λ=1e-1 | ms λ=1e-1 |\n"
            f"|---|---|---|---|---|")
    lines = [head]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(f"{cells[d][0]} | {cells[d][1]:.0f}"
                                                  for d in DAMPINGS) + " |")
    lines.append("\nsketch time (ℓ products, ms): " +
                 ", ".join(f"ℓ = {ell}: {ms:.0f}" for ell, ms in sketch_ms.items()))
    return "\n".join(lines)


def update_table(system, setup, keep, repeats):
    """Seconds per optimizer update (cg against nystrom-cg at several ℓ), interleaved round
    by round so load drift on a shared machine hits all alike; warm-started as in training
    (state from an update on the batch one step older)."""
    params, walkers, e_l = keep[0]
    prev = keep[1]
    variants = ([("cg", {})] + [("nystrom-cg", {"nystrom_rank": ell}) for ell in RANKS]
                + [("kfac-cg", {})])
    fns = []
    for solver, kw in variants:
        cfg = _config(system, solver, **kw).optim
        from vmc.optim import make_optimizer
        kw = {"module": setup.ansatz.module} if solver == "kfac-cg" else {}
        opt = make_optimizer(cfg, setup.ansatz.log_psi, **kw)
        upd = jax.jit(opt.update)
        _, st, _ = upd(prev[0], opt.init(params), prev[1], prev[2], 0)
        out = jax.block_until_ready(upd(params, st, walkers, e_l, 1))
        fns.append((upd, st, int(out[2].iterations)))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, (upd, st, _) in enumerate(fns):
            t = time.perf_counter()
            jax.block_until_ready(upd(params, st, walkers, e_l, 1))
            times[i].append(time.perf_counter() - t)
    lines = [f"\n{system}: one update (defaults, warm start, sketch built in the update), "
             f"median of {repeats} interleaved rounds\n",
             "| solver | PCG its | F-products (its + 2 + ℓ) | ms/update |",
             "|---|---|---|---|"]
    for (solver, kw), (_, _, its), ts in zip(variants, fns, times):
        ell = kw.get("nystrom_rank", 16 if solver == "kfac-cg" else 0)
        label = solver + (f", ℓ = {ell}" if ell else "")
        lines.append(f"| {label} | {its} | {its + 2 + ell} | {1e3 * np.median(ts):.0f} |")
    return "\n".join(lines)


def train_table(system, steps, seed):
    lines = [f"\n{system}, {steps} training steps from the same initial state (seed {seed}, "
             f"no pretraining)\n",
             "| solver | energy, last quarter (Ha) | mean its | s/step |", "|---|---|---|---|"]
    variants = [("cg", {}), ("nystrom-cg", {}),
                ("nystrom-cg", {"nystrom_refresh_every": 10, "nystrom_refresh_iters": 1000}),
                ("kfac-cg", {})]
    for solver, kw in variants:
        setup = build(_config(system, solver, seed, **kw))
        state, key = _burned_in(setup, seed)
        step = make_train_step(setup)
        energies, its = [], []
        state, _ = step(state, jax.random.fold_in(key, 10_000), 0)   # compile
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for t in range(1, steps):
            state, stats = step(state, jax.random.fold_in(key, 10_000 + t), t)
            energies.append(float(stats.energy))
            its.append(float(stats.iterations))
        sec = (time.perf_counter() - t0) / (steps - 1)
        tail = np.asarray(energies[-(steps // 4):])
        o = setup.cfg.optim
        label = solver + (f", ℓ = {o.nystrom_rank}, k = {o.nystrom_refresh_every}"
                          if solver == "nystrom-cg" else "")
        lines.append(f"| {label} | {tail.mean():.5f} ± {tail.std() / np.sqrt(tail.size):.5f} "
                     f"| {np.mean(its):.1f} | {sec:.3f} |")
        log(lines[-1])
    lines.append("(± is the naive standard error of the mean over the steps, correlations "
                 "ignored)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="*", default=["He"], choices=sorted(SYSTEMS),
                    help="systems of the solve table (none: training only)")
    ap.add_argument("--equil", type=int, default=200, help="sample-solver steps before the batch")
    ap.add_argument("--olds", type=int, nargs="*", default=[5, 20],
                    help="ages (steps) of the reused sketches")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=64, help="walkers of the subset sketch")
    ap.add_argument("--train", type=int, default=300, help="He training steps (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables", nargs="+", default=["solve", "updates"],
                    choices=["solve", "updates"], help="per-system tables")
    args = ap.parse_args(argv)
    out = []
    for system in args.systems:
        setup, keep = batches(system, args.equil, args.olds, args.seed)
        if "solve" in args.tables:
            out.append(solve_table(system, setup, keep, args.olds, args.tol, args.repeats,
                                   args.subset))
            print(out[-1], flush=True)
        if "updates" in args.tables:
            out.append(update_table(system, setup, keep, 3 * args.repeats))
            print(out[-1], flush=True)
    if args.train:
        out.append(train_table("He", args.train, args.seed))
        print(out[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
