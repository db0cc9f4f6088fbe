"""What the non-local ECP estimator's spherical rule costs and adds to the E_L variance.

    python scripts/ecp_rules.py RUN_DIR [--step N] [--rules octahedron icosahedron ...]
                                [--keys 8] [--repeats 5] [--burn-in 20]

The rotated-quadrature estimator (MATH.md §8, `vmc.ecp.nonlocal_energy`) is unbiased for any
rule whose weights sum to one, since the rotation is Haar-random; the rule's order only sets
its variance and its cost (n_electrons × n_ECP-atoms × n_q evaluations of ψ per walker). This
script takes a trained ECP run's checkpoint, samples |ψ|² from its walkers for `--burn-in`
Metropolis steps with the frozen parameters, and then, on those walkers, for each rule:

* the time of one batched E_L over all walkers (jit-compiled, median of `--repeats`, one
  process, the rules interleaved round by round);
* the variance of E_L over the walkers (Ha², mean over `--keys` rotation keys), and the part
  of it that is the rule's: the mean over walkers of the variance over the keys of each
  walker's E_L, E_x[Var_R(E_L | x)] (the rest, Var_x(E_R[E_L | x]), is the wavefunction's);
* the mean E_L, whose differences between rules are noise (all are unbiased);
* the time of one whole training step (`vmc.train.make_train_step`: Metropolis moves, E_L,
  the optimizer's update), from the same state each time, so the rule's share of a step.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vmc.ecp import RULES  # noqa: E402


def load(run: pathlib.Path, step, burn_in: int, seed: int):
    """(cfg, setup, params, mcmc, step) from a run's checkpoint, after `burn_in` moves."""
    from run_checkpoint import load_checkpoint
    cfg, setup, params, mcmc, at_step, sampler_step = load_checkpoint(run, step)
    step_fn = jax.jit(lambda m, k: sampler_step(params, m, k)[0])
    key = jax.random.PRNGKey(seed)
    for t in range(burn_in):
        mcmc = step_fn(mcmc, jax.random.fold_in(key, t))
    return cfg, setup, params, mcmc, at_step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=pathlib.Path)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    p.add_argument("--rules", nargs="+", default=["tetrahedron", "octahedron", "icosahedron"],
                   choices=RULES)
    p.add_argument("--keys", type=int, default=8, help="rotation keys per rule")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per rule")
    p.add_argument("--burn-in", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import dataclasses
    from vmc.ecp import quadrature
    from vmc.train import TrainState, build, make_train_step
    cfg, setup, params, mcmc, step = load(a.run, a.step, a.burn_in, a.seed)
    walkers = mcmc.walkers
    if not setup.molecule.has_ecp:
        raise SystemExit(f"error: {a.run}: the run has no ECP atom (hamiltonian.ecp)")
    fns, steps, states = {}, {}, {}
    for rule in a.rules:   # the run's own E_L (chunks, Laplacian) with another rule
        c = dataclasses.replace(cfg, hamiltonian=dataclasses.replace(cfg.hamiltonian,
                                                                     ecp_rule=rule))
        s = build(c, hf=setup.hf)
        fns[rule] = jax.jit(s.batched_local_energy)
        steps[rule] = make_train_step(s)
        states[rule] = TrainState(params, s.optimizer.init(params), mcmc)
    key = jax.random.PRNGKey(a.seed + 1)
    energies = {r: [] for r in a.rules}
    times = {r: [] for r in a.rules}
    step_times = {r: [] for r in a.rules}
    for r in a.rules:                       # compile, and the keys' energies
        for k in range(a.keys):
            energies[r].append(np.asarray(fns[r](params, walkers, jax.random.fold_in(key, k)),
                                          np.float64))
    for t in range(a.repeats):              # interleaved rounds
        for r in a.rules:
            kk = jax.random.fold_in(key, 1000 + t)
            t0 = time.perf_counter()
            jax.block_until_ready(fns[r](params, walkers, kk))
            times[r].append(time.perf_counter() - t0)
            if t == 0:                      # compile the training step
                jax.block_until_ready(steps[r](states[r], kk, 0))
            t0 = time.perf_counter()
            jax.block_until_ready(steps[r](states[r], kk, 0))
            step_times[r].append(time.perf_counter() - t0)
    n_w = walkers.shape[0]
    print(f"{a.run}: checkpoint step {step}, {n_w} walkers after {a.burn_in} moves, "
          f"{a.keys} rotation keys per rule, E_L and the training step (from the same state) "
          f"timed {a.repeats}× per rule (median; ratio: to the last rule)")
    print(f"{'rule':12s} {'points':>6s} {'E_L ms':>8s} {'ratio':>6s} {'step ms':>8s} "
          f"{'ratio':>6s} {'mean E_L (Ha)':>14s} "
          f"{'var E_L (Ha²)':>13s} {'rule part (Ha²)':>15s} {'share':>6s}")
    base = np.median(times[a.rules[-1]])
    base_step = np.median(step_times[a.rules[-1]])
    for r in a.rules:
        e = np.stack(energies[r])                      # (keys, n_w)
        ok = np.all(np.isfinite(e), axis=0)
        e = e[:, ok]
        var_total = float(np.mean(np.var(e, axis=1)))
        rule_part = float(np.mean(np.var(e, axis=0, ddof=1)))
        ms = 1e3 * np.median(times[r])
        st = np.median(step_times[r])
        print(f"{r:12s} {len(quadrature(r)[1]):6d} {ms:8.1f} {np.median(times[r]) / base:6.2f} "
              f"{1e3 * st:8.1f} {st / base_step:6.2f} "
              f"{np.mean(e):14.6f} {var_total:13.4f} {rule_part:15.4f} "
              f"{rule_part / var_total:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
