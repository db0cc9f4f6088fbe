"""Child program of `bench_step.py --parts`: the parts of one benchmark training step, timed.

Run with the working directory and PYTHONPATH at a checkout (or a `git archive` export of
one); it uses only what every checkout since 3cba5f0 has (load_config, build, init_state,
make_burn_in_step, make_sampler, make_train_step, the optimizer's update), so the same
program times the base commit and this one. Prints one JSON object: median ms of `repeats`
calls after two warm calls, per part:

* ``moves``: one sampler step (`sampler.moves` Metropolis moves) less ``refresh``;
* ``refresh``: log|ψ| of every walker;
* ``local energy``: E_L of every walker;
* ``update``: the optimizer's update (KFAC: its statistics pass and the solve);
* ``step``: the whole jitted training step.

    python scripts/_bench_step_parts.py SYSTEM REPEATS SETTING...
"""

import json
import pathlib
import statistics
import sys
import time

# profile_step sets XLA's CPU scheduler flag and float64 as vmc.cli does, and its
# prepared_state (init_state + burn-in moves) uses only APIs every checkout has
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from profile_step import prepared_state  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vmc.config import load_config  # noqa: E402
from vmc.sampler import make_sampler  # noqa: E402
from vmc.train import build, make_train_step  # noqa: E402


def main(system: str, repeats: int, settings: list) -> dict:
    cfg = load_config(f"systems/{system}.yaml", overrides=tuple(settings))
    setup = build(cfg)
    state = prepared_state(setup, 3)
    s = cfg.sampler
    _, sampler_step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove, s.adapt_rate)
    sampler_step = jax.jit(sampler_step)
    log_psi = setup.ansatz.log_psi
    refresh = jax.jit(jax.vmap(lambda p, x: log_psi(p, x)[1], in_axes=(None, 0)))
    local_energy = jax.jit(setup.batched_local_energy)
    walkers = state.mcmc.walkers
    e_l = local_energy(state.params, walkers)
    update = jax.jit(lambda p, o, w, e, t: setup.optimizer.update(p, o, w, e, t))
    step = make_train_step(setup)
    key, t = jax.random.PRNGKey(7), jnp.asarray(5)
    parts = {
        "sampler": lambda: sampler_step(state.params, state.mcmc, key),
        "refresh": lambda: refresh(state.params, walkers),
        "local energy": lambda: local_energy(state.params, walkers),
        "update": lambda: update(state.params, state.opt_state, walkers, e_l, t),
        "step": lambda: step(state, key, t),
    }
    for fn in parts.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times = {k: [] for k in parts}
    for _ in range(repeats):
        for k, fn in parts.items():      # interleaved, so a load burst hits every part
            tic = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - tic)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    ms["moves"] = max(ms.pop("sampler") - ms["refresh"], 0.0)
    return {k: ms[k] for k in ("moves", "refresh", "local energy", "update", "step")}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])))
