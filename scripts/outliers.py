"""Where a trained run's local-energy outliers come from: nodes, nuclei or electron pairs.

    python scripts/outliers.py RUN_DIR [--step N] [--steps 400] [--seed 0]

The training variance of a run jumps when one walker's E_L lands far from the rest (README,
`variance_spike`). This script samples |ψ|² with the checkpoint's frozen parameters
(`sampler.moves` Metropolis moves per step, the run's walkers) and, for every walker and
step, records E_L and three distances that make E_L diverge if ψ is not exact there:

* node: d_node = 1/‖∇ log|ψ|‖ (3n-dimensional, bohr). Near a node ψ ≈ (x − x₀)·∇ψ, so
  ∇ log|ψ| ≈ n̂/d and the kinetic energy −½∇²ψ/ψ goes as 1/d with either sign; at a nucleus
  ‖∇ log|ψ|‖ stays near Z (Kato's cusp), so d_node ≳ 1/Z there.
* nucleus: r_en, the smallest electron–nucleus distance. A cusp that is not exactly −Z
  leaves E_L ≈ (Z_cusp − Z)/r_en.
* pair: r_ee, the smallest distance between electrons of opposite spin (same-spin pairs
  meet at nodes). A wrong e–e cusp (exact: ½) leaves E_L ≈ (1 − 2 c)/r_ee.

An outlier is a walker whose |E_L − median| exceeds `--threshold` (default: the deviation
that alone makes a step's variance 10× the median variance, √(10 n_w median Var)), i.e. what
trips the variance_spike detector. Each outlier is assigned to the smallest of d_node·Z_max,
r_en, r_ee relative to its bulk median (the most extreme, in units of its typical value);
the table gives counts, the mean |E_L − median| and the share of the outliers' Σ (E_L −
median)² per class, and the same distances for all walkers for comparison.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def sample(run: pathlib.Path, step, steps: int, seed: int):
    """(E_L, d_node, r_en, r_ee) as (steps, n_w) arrays, and the run's description."""
    from run_checkpoint import load_checkpoint
    cfg, setup, params, mcmc, at_step, sampler_step = load_checkpoint(run, step)
    mol = setup.molecule
    atoms = jnp.asarray(mol.positions, mcmc.walkers.dtype)
    n_up = mol.n_up
    grad = jax.vmap(jax.grad(lambda x: setup.ansatz.log_psi(params, x)[1]))

    @jax.jit
    def one(mcmc, key):
        mcmc, _ = sampler_step(params, mcmc, key)
        x = mcmc.walkers
        e = setup.batched_local_energy(params, x, setup.ecp_key(key))
        g = grad(x)
        d_node = 1.0 / jnp.sqrt(jnp.sum(g.astype(jnp.float64) ** 2, axis=(1, 2)))
        r_en = jnp.linalg.norm(x[:, :, None] - atoms[None, None], axis=-1).min(axis=(1, 2))
        if 0 < n_up < x.shape[1]:
            dd = x[:, :n_up, None] - x[:, None, n_up:]
            r_ee = jnp.linalg.norm(dd, axis=-1).min(axis=(1, 2))
        else:
            r_ee = jnp.full(x.shape[0], jnp.inf, x.dtype)
        return mcmc, (e, d_node, r_en, r_ee)

    rows = []
    key = jax.random.PRNGKey(seed)
    for t in range(steps):
        mcmc, out = one(mcmc, jax.random.fold_in(key, t))
        rows.append([np.asarray(v, np.float64) for v in out])
    cols = [np.stack([r[i] for r in rows]) for i in range(4)]
    z_max = float(np.max(mol.charges))
    return cols, {"system": cfg.name, "step": at_step, "walkers": cols[0].shape[1],
                  "z_max": z_max}


def classify(e, d_node, r_en, r_ee, z_max: float, threshold=None):
    """Outlier mask and class per outlier ('node', 'nucleus', 'pair', 'non-finite').

    Each distance is divided by its median over all samples; the smallest ratio names the
    class (d_node is scaled by Z_max first, so a nucleus' 1/Z does not count as a node)."""
    med = np.nanmedian(e, axis=1, keepdims=True)
    dev = e - med
    var = np.nanmedian(np.nanvar(e, axis=1))
    if threshold is None:
        threshold = np.sqrt(10 * e.shape[1] * var)
    bad = ~np.isfinite(e) | (np.abs(dev) > threshold)
    ratios = np.stack([d_node * z_max / np.nanmedian(d_node * z_max),
                       r_en / np.nanmedian(r_en),
                       r_ee / np.nanmedian(r_ee[np.isfinite(r_ee)]) if np.isfinite(r_ee).any()
                       else np.full(r_ee.shape, np.inf)])
    names = np.array(["node", "nucleus", "pair"])
    cls = names[np.argmin(ratios, axis=0)]
    cls = np.where(np.isfinite(e), cls, "non-finite")
    return bad, cls, dev, threshold, var


R_EN_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, np.inf)


def by_distance(dev, r, edges=R_EN_BINS):
    """Rows (lo, hi, share of samples, mean dev, rms dev, share of Σ dev²) of E_L − step
    median binned by a distance r (bohr), over every finite sample, outlier or not."""
    ok = np.isfinite(dev)
    total = np.sum(dev[ok] ** 2)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = ok & (r >= lo) & (r < hi)
        if not m.any():
            rows.append((lo, hi, 0.0, np.nan, np.nan, 0.0))
            continue
        d = dev[m]
        rows.append((lo, hi, m.sum() / ok.sum(), d.mean(), np.sqrt(np.mean(d * d)),
                     np.sum(d * d) / total))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=pathlib.Path)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    p.add_argument("--steps", type=int, default=400, help="sampled steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None, help="|E_L - median| in Ha")
    a = p.parse_args(argv)
    (e, d_node, r_en, r_ee), info = sample(a.run, a.step, a.steps, a.seed)
    bad, cls, dev, thr, var = classify(e, d_node, r_en, r_ee, info["z_max"], a.threshold)
    n = e.size
    print(f"{a.run}: {info['system']} checkpoint step {info['step']}, {a.steps} steps x "
          f"{info['walkers']} walkers ({n} samples), median step variance {var:.4g} Ha^2")
    print(f"outliers: |E_L - median| > {thr:.3g} Ha: {int(bad.sum())} samples "
          f"({bad.sum() / n:.2e} per sample, {bad.any(axis=1).sum()} of {a.steps} steps)")
    sq = np.where(bad, dev, 0.0) ** 2
    total = np.nansum(sq)
    print(f"{'class':10s} {'outliers':>8s} {'mean |dE| (Ha)':>15s} {'share of sum dE^2':>18s} "
          f"{'median d_node':>14s} {'median r_en':>12s} {'median r_ee':>12s}")
    for name in ("node", "nucleus", "pair", "non-finite"):
        m = bad & (cls == name)
        if not m.any():
            continue
        share = np.nansum(sq[m]) / total if total > 0 else float("nan")
        print(f"{name:10s} {int(m.sum()):8d} {np.nanmean(np.abs(dev[m])):15.2f} {share:18.3f} "
              f"{np.median(d_node[m]):14.4f} {np.median(r_en[m]):12.4f} {np.median(r_ee[m]):12.4f}")
    print(f"{'all':10s} {n:8d} {np.nanmean(np.abs(dev)):15.3f} {'':18s} "
          f"{np.median(d_node):14.4f} {np.median(r_en):12.4f} {np.median(r_ee):12.4f}")
    worst = np.argsort(np.where(bad, -np.abs(np.nan_to_num(dev, nan=np.inf)), 0).ravel())[:10]
    print("largest: step walker  E_L - median (Ha)  d_node  r_en  r_ee  class")
    for i in worst:
        if not bad.ravel()[i]:
            break
        t, w = divmod(int(i), e.shape[1])
        print(f"  {t:5d} {w:6d} {dev[t, w]:18.2f} {d_node[t, w]:7.4f} {r_en[t, w]:6.4f} "
              f"{r_ee[t, w]:6.4f}  {cls[t, w]}")
    print("E_L - step median by the smallest e-n distance (all samples):")
    print("  r_en (bohr)      share  mean dev (Ha)  rms dev (Ha)  share of sum dev^2")
    for lo, hi, frac, mean, rms, share in by_distance(dev, r_en):
        print(f"  [{lo:.2f}, {hi:.2f})  {frac:8.3f} {mean:14.3f} {rms:13.3f} {share:19.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
