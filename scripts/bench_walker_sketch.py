"""Issue #16: a preconditioner from a subset of the walkers' exact per-walker gradients.

F = ŌᵀŌ's range is spanned by the batch's centred per-walker gradients. The exact top
eigenpairs of the subset's F_S = Ō_SᵀŌ_S (the first m walkers, centred on their own mean, so
every direction lies in range(Ōᵀ)) give P⁻¹ = U diag((λ̂_ℓ + λ)/(λ̂_i + λ)) Uᵀ + (I − UUᵀ)
(`vmc.optim.nystrom.nystrom_preconditioner`) that, unlike a sketch of an earlier batch,
cannot split the λ-cluster: U ⊂ range(Ōᵀ), so P⁻¹ is the identity on range(Ōᵀ)^⊥. The
question is how much of F's spectrum inside the range m walkers capture, and what their
per-walker gradients cost in F-products.

One process, one batch per system (`scripts/bench_pcg.py`'s: default FermiNet, 256 walkers,
float32 network, `--equil` `sample` steps after burn-in; a second batch 5 steps earlier),
PCG from x₀ = 0 to a relative residual of 1e-4 at λ = 1e-3 and 0.1. "sketch ms" is the
per-walker gradients (vmap of grad), the m × m Gram, its eigendecomposition and U; "per CG
its" is the plain-CG solve's time per iteration (one F-product), so "sketch in products"
converts the sketch's time into F-products of the same batch.

    python scripts/bench_walker_sketch.py --systems He Li
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_pcg as B  # noqa: E402  (configures the process and enables float64)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vmc.optim.cg import linearize_fisher, pcg  # noqa: E402
from vmc.optim.nystrom import _cholesky_qr, nystrom_preconditioner  # noqa: E402
from vmc.optim.sr import (centred_energies, centred_jacobian,  # noqa: E402
                          clip_local_energy)

F64 = jnp.float64
SUBSETS = (16, 32, 64, 128, 256)


def walker_sketch(log_psi, params, walkers, m: int):
    """(U (p, m) float64 orthonormal or zero columns, λ̂ (m,) descending): the exact
    eigenpairs of F_S = Ō_SᵀŌ_S for the first m walkers (Ō_S centred on their mean, / √m),
    from the m × m Gram matrix Ō_SŌ_Sᵀ = W Σ² Wᵀ: U = Ō_Sᵀ W Σ⁻¹, λ̂ = Σ²."""
    o = centred_jacobian(log_psi, params, walkers[:m])[0].astype(F64)
    gram = o @ o.T
    s2, w = jnp.linalg.eigh(0.5 * (gram + gram.T))
    s2, w = s2[::-1], w[:, ::-1]
    keep = s2 > 1e-10 * s2[0]
    u = o.T @ (w / jnp.sqrt(jnp.where(keep, s2, 1.0)))
    return _cholesky_qr(u, keep), jnp.where(keep, s2, 0.0)


def table(system: str, equil: int, repeats: int) -> str:
    setup, keep = B.batches(system, equil, [5])
    log_psi = setup.ansatz.log_psi
    lines = [f"\n{system}: default FermiNet, 256 walkers, tolerance 1e-4, x₀ = 0\n",
             "| batch | m walkers | sketch ms | sketch in products | its λ=1e-3 | "
             "products + sketch, ratio to plain | ms solve + sketch, ratio | its λ=0.1 |",
             "|---|---|---|---|---|---|---|---|"]
    for age in (0, 5):
        params, walkers, e_l = keep[age]
        eps = centred_energies(clip_local_energy(e_l.astype(F64), setup.cfg.optim.clip)[0])
        p = sum(x.size for x in jax.tree_util.tree_leaves(params))

        @jax.jit
        def solve(u, lam, damping):
            op = linearize_fisher(log_psi, params, walkers, damping)
            res = pcg(op.matvec, op.gradient(eps), jnp.zeros((p,), F64), 5000, 1e-4,
                      nystrom_preconditioner(u, lam, damping))
            return res.iterations

        zero = (jnp.zeros((p, 1), F64), jnp.ones((1,), F64))
        its0, ms0 = B._median_time(lambda: solve(*zero, 1e-3), repeats)
        its0 = int(its0)
        per_it = ms0 / max(its0, 1)
        lines.append(f"| step {equil - age} | plain CG | | | {its0} | {its0 + 1} | {ms0:.0f} ms | "
                     f"{int(solve(*zero, 0.1))} |")
        for m in SUBSETS:
            fn = jax.jit(lambda prm, w, m=m: walker_sketch(log_psi, prm, w, m))
            sk, ms_sk = B._median_time(lambda: fn(params, walkers), repeats)
            its, ms = B._median_time(lambda: solve(*sk, 1e-3), repeats)
            its, eq = int(its), ms_sk / per_it
            lines.append(f"| step {equil - age} | {m} | {ms_sk:.0f} | {eq:.1f} | {its} | "
                         f"{its + 1 + eq:.0f}, {(its + 1 + eq) / (its0 + 1):.2f} | "
                         f"{ms + ms_sk:.0f}, {(ms + ms_sk) / ms0:.2f} | "
                         f"{int(solve(*sk, 0.1))} |")
            B.log(lines[-1])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", nargs="+", default=["He", "Li"], choices=sorted(B.SYSTEMS))
    ap.add_argument("--equil", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    for system in args.systems:
        print(table(system, args.equil, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
