"""The `sample` solver's update with the float64 Gram ŌŌᵀ as one product (row blocks 1)
against `vmc.optim.sr.symmetric_gram` (row blocks 4), side by side in one process.

Both updates are jit-compiled at the same state (default network, 256 walkers, after
`--burn-in` sampler steps), then timed in interleaved rounds (median of `--repeats` calls
per round); it prints the best round of each, their ratio and the largest difference of
the new parameters.

    python scripts/bench_gram.py --system N
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from profile_step import make_cfg, prepared_state   # noqa: E402  (sets jax_enable_x64)
from vmc.optim import sr   # noqa: E402
from vmc.train import build   # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="N")
    p.add_argument("--burn-in", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    setup = build(make_cfg(args.system, "default", "sample"))
    state = prepared_state(setup, args.burn_in)
    walkers = state.mcmc.walkers
    e_l = jax.jit(setup.batched_local_energy)(state.params, walkers)
    fns, out = {}, {}
    for blocks in (1, sr.GRAM_ROW_BLOCKS):
        sr.GRAM_ROW_BLOCKS = blocks     # read when the update is traced
        fns[blocks] = jax.jit(lambda p, o, w, e: setup.optimizer.update(p, o, w, e, 5)[0])
        out[blocks] = fns[blocks](state.params, state.opt_state, walkers, e_l)
    times = {b: [] for b in fns}
    for _ in range(args.rounds):
        for b, fn in fns.items():
            runs = []
            for _ in range(args.repeats):
                tic = time.perf_counter()
                jax.block_until_ready(fn(state.params, state.opt_state, walkers, e_l))
                runs.append(time.perf_counter() - tic)
            times[b].append(statistics.median(runs))
    flat = {b: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(v)])
            for b, v in out.items()}
    one, many = sorted(fns)
    n_p = flat[one].size
    print(f"{args.system}: sample update, {walkers.shape[0]} walkers, {n_p} parameters")
    for b in fns:
        print(f"  row blocks {b}: {1e3 * min(times[b]):.1f} ms "
              f"(rounds {' / '.join(f'{1e3 * t:.1f}' for t in times[b])})")
    print(f"  ratio {min(times[many]) / min(times[one]):.2f}; largest |Δθ| "
          f"{np.abs(flat[many] - flat[one]).max():.1e} (|θ| up to {np.abs(flat[one]).max():.1f})")


if __name__ == "__main__":
    main()
