"""The float64 rescue of the evaluation's E_L (hamiltonian.f64_rescue) at near-node points.

For each system's trained run of scripts/bench_precision.py (runs/bench_precision/X, reused):

1. sample `--sample-steps` × 256 walkers from |ψ|² (frozen parameters, as bench_precision);
2. bisect `--configs` configurations onto a node of one determinant (κ_k >= 1e7, the same
   `near_node` as bench_precision's bisection part);
3. embed them `--per-batch` at a time among ordinary sampled walkers in batches of
   `--batch` (a run meets one near-node walker in 10⁴–10⁶ samples: this is far denser), and
   evaluate E_L there with the evaluation's own function, `Setup.eval_local_energy`, with
   the rescue off (0) and on (the default `hamiltonian.f64_rescue`), against the float64
   network (`run.x64: true`);
4. time one jitted evaluation step (`vmc.evaluate.make_record_step`, 256 walkers, 10 moves)
   with and without the rescue, back to back in alternating order (median of paired ratios).

    python scripts/bench_rescue.py --systems He Li LiH Be N
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_precision import System, log, near_node, sample  # noqa: E402

from vmc.config import HamiltonianConfig, load_config  # noqa: E402
from vmc.evaluate import make_record_step  # noqa: E402
from vmc.train import build  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def embedded(near: np.ndarray, pool: np.ndarray, per: int, batch: int, seed: int):
    """Batches (n_b, batch, n, 3) float32 with `per` near-node points each (at random slots)
    among walkers drawn from pool; returns (batches, slots (n_b, per))."""
    rng = np.random.default_rng(seed)
    n_b = -(-len(near) // per)
    out = pool[rng.integers(0, len(pool), (n_b, batch))].copy()
    slots = np.stack([rng.choice(batch, per, replace=False) for _ in range(n_b)])
    for b in range(n_b):
        for j in range(per):
            out[b, slots[b, j]] = near[(b * per + j) % len(near)]
    return out, slots


def record_times(setups: dict, params, mcmc, repeats: int) -> dict:
    """Median s of one jitted evaluation step per variant, and the median paired ratio."""
    fns = {v: make_record_step(s, params) for v, s in setups.items()}
    key = jax.random.PRNGKey(7)
    for f in fns.values():
        jax.block_until_ready(f(mcmc, key, jnp.asarray(0, jnp.int32)))
    times = {v: [] for v in fns}
    names = list(fns)
    for i in range(repeats):
        for v in (names if i % 2 == 0 else names[::-1]):
            tic = time.perf_counter()
            jax.block_until_ready(fns[v](mcmc, jax.random.fold_in(key, i),
                                         jnp.asarray(0, jnp.int32)))
            times[v].append(time.perf_counter() - tic)
    ratio = float(np.median(np.asarray(times[names[1]]) / np.asarray(times[names[0]])))
    return {v: float(np.median(t)) for v, t in times.items()} | {"ratio": ratio}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=["He", "Li", "LiH", "Be", "N"])
    p.add_argument("--runs", default="runs/bench_precision")
    p.add_argument("--sample-steps", type=int, default=40)
    p.add_argument("--configs", type=int, default=256)
    p.add_argument("--per-batch", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--timing-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rescue", type=int, default=HamiltonianConfig().f64_rescue,
                   help="hamiltonian.f64_rescue of the 'on' column (default: the default)")
    a = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    rows = []
    for name in a.systems:
        run_dir = ROOT / a.runs / name
        if not (run_dir / "config.yaml").exists():
            print(f"error: --runs: no trained run {run_dir} (run scripts/bench_precision.py "
                  f"--systems {name} first)", file=sys.stderr)
            return 2
        sysm = System(run_dir)
        cfg_path = run_dir / "config.yaml"
        rescue = a.rescue
        setups = {"off": build(load_config(cfg_path, overrides=("hamiltonian.f64_rescue=0",))),
                  "on": build(load_config(cfg_path,
                                          overrides=(f"hamiltonian.f64_rescue={rescue}",)))}
        walkers = sample(sysm, 50, a.sample_steps, a.seed + 1)
        pool = walkers.reshape((-1,) + walkers.shape[2:])
        tic = time.time()
        near, k, cond, _ = near_node(sysm, pool, a.configs, 1e7, a.seed, 256)
        log(f"{name}: {len(near)} near-node configurations ({time.time() - tic:.0f} s)")
        batches, slots = embedded(near, pool, a.per_batch, a.batch, a.seed)
        ref_fn = jax.jit(sysm.ref.batched_local_energy)
        fns = {v: jax.jit(s.eval_local_energy) for v, s in setups.items()}
        d = {v: [] for v in fns}
        d_ord = {v: [] for v in fns}
        for b in range(len(batches)):
            x = jnp.asarray(batches[b])
            ref = np.asarray(ref_fn(sysm.p64, x.astype(jnp.float64)), np.float64)
            ordinary = np.setdiff1d(np.arange(a.batch), slots[b])
            for v, f in fns.items():
                e = np.asarray(f(sysm.p32, x), np.float64)
                err = np.where(np.isfinite(e), np.abs(e - ref), np.inf)
                d[v].append(err[slots[b]])
                d_ord[v].append(err[ordinary])
        res = {v: np.concatenate(d[v]) for v in d}
        res_ord = {v: np.concatenate(d_ord[v]) for v in d_ord}
        t = record_times(setups, sysm.p32, sysm.state.mcmc, a.timing_steps)
        rows.append((name, len(near), float(np.median(cond)), res, res_ord, rescue, t))
        log(f"  near-node max |dE| off {1e3 * res['off'].max():.4g} mHa, on "
            f"{1e3 * res['on'].max():.4g} mHa; eval step {t['off']:.3f} -> {t['on']:.3f} s")
    print(f"\nnear-node configurations (kappa_k >= 1e7), {a.per_batch} per batch of {a.batch} "
          f"sampled walkers; |E_L - E_L(float64 network)|, evaluation E_L without -> with "
          f"the rescue; evaluation step (256 walkers) with/without")
    print("| system | configs | κ median | rescue (walkers/device) | near-node > 0.1 mHa | "
          "near-node max abs ΔE_L (mHa) | near-node non-finite | ordinary walkers max abs "
          "ΔE_L (mHa) | eval step off → on (s) | on/off |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, n, kappa, res, res_ord, rescue, t in rows:
        def mx(x):
            f = x[np.isfinite(x)]
            return f"{1e3 * f.max():.3g}" if len(f) else "-"
        print(f"| {name} | {n} | {kappa:.1e} | {rescue} | "
              f"{int(np.sum(res['off'] > 1e-4))} → {int(np.sum(res['on'] > 1e-4))} | "
              f"{mx(res['off'])} → {mx(res['on'])} | "
              f"{int(np.sum(~np.isfinite(res['off'])))} → {int(np.sum(~np.isfinite(res['on'])))} | "
              f"{mx(res_ord['off'])} → {mx(res_ord['on'])} | "
              f"{t['off']:.3f} → {t['on']:.3f} | {t['ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
