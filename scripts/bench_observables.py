"""Cost of each observable: time of one evaluation step with and without it, side by side.

    python scripts/bench_observables.py [--system H2|LiH|Be] [--ansatz ferminet|hf]
                                        [--walkers 256] [--steps 10] [--rounds 3] [--x64]

For each case (energy only, + s2, + dipole, + density, + forces, + all) the jitted evaluation
step (`sampler.moves` Metropolis moves, local energy, observables on the same walkers;
`vmc.evaluate.make_record_step`, as `vmc eval` runs it) is compiled by a first call, then
`--steps` calls are timed, in `--rounds` interleaved rounds (the fastest counts); printed: seconds per step and the factor over energy only.
"""

from __future__ import annotations

import argparse
import sys
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

SYSTEMS = {
    "H2": ([{"symbol": "H", "position": [0.0, 0.0, 0.0]},
            {"symbol": "H", "position": [0.0, 0.0, 1.4]}], 0),
    "LiH": ([{"symbol": "Li", "position": [0.0, 0.0, 0.0]},
             {"symbol": "H", "position": [0.0, 0.0, 3.015]}], 0),
    "Be": ([{"symbol": "Be", "position": [0.0, 0.0, 0.0]}], 0),
}
CASES = ((), ("s2",), ("dipole",), ("density",), ("forces",), ("s2", "dipole", "density", "forces"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="LiH", choices=sorted(SYSTEMS))
    p.add_argument("--ansatz", default="ferminet", choices=("ferminet", "psiformer", "hf"))
    p.add_argument("--walkers", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (min)")
    p.add_argument("--x64", action="store_true")
    args = p.parse_args(argv)
    import jax
    jax.config.update("jax_enable_x64", True)
    from vmc.config import config_from_dict
    from vmc.evaluate import make_record_step
    from vmc.sampler import init_walkers, make_sampler
    from vmc.train import build

    atoms, spin = SYSTEMS[args.system]
    cfg = config_from_dict({"atoms": atoms, "spin": spin}, name=args.system,
                           overrides=(f"ansatz.name={args.ansatz}", f"run.x64={str(args.x64).lower()}",
                                      "optim.solver=adam"))
    setup = build(cfg)
    params = jax.jit(setup.ansatz.init)(jax.random.PRNGKey(0))
    w = init_walkers(jax.random.PRNGKey(1), setup.molecule, args.walkers, 1.0, setup.dtype)
    print(f"{args.system} ({setup.molecule.n_up} up + {setup.molecule.n_down} down), ansatz "
          f"{args.ansatz}, {args.walkers} walkers, {cfg.sampler.moves} moves/step, "
          f"{'float64' if args.x64 else 'float32'}, {jax.devices()[0].device_kind}")
    print(f"{'observables':<32} {'compile+1st s':>14} {'s/step':>9} {'x energy':>9}")
    init_mcmc, _ = make_sampler(setup.ansatz.log_psi, cfg.sampler.moves)
    state0 = init_mcmc(params, w, 0.2)
    poison = jax.numpy.asarray(0, jax.numpy.int32)
    records, warm = [], []
    for names in CASES:                       # compile every case first
        record = make_record_step(setup, params, names)
        t0 = time.perf_counter()
        jax.block_until_ready(record(state0, jax.random.PRNGKey(2), poison))
        warm.append(time.perf_counter() - t0)
        records.append(record)
    best = [float("inf")] * len(CASES)
    for _ in range(args.rounds):              # interleaved rounds; the fastest counts
        for c, record in enumerate(records):
            state, t1 = state0, time.perf_counter()
            for t in range(args.steps):
                state, row, obs = record(state, jax.random.PRNGKey(3 + t), poison)
            jax.block_until_ready((state, row, obs))
            best[c] = min(best[c], (time.perf_counter() - t1) / args.steps)
    for names, w_s, per in zip(CASES, warm, best):
        label = "energy only" if not names else "+ " + ", ".join(names)
        print(f"{label:<32} {w_s:>14.1f} {per:>9.4f} {per / best[0]:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
