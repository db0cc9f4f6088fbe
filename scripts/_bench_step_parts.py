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
import os
import statistics
import sys
import time

_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"   # as vmc.cli
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)   # as vmc.cli, in every checkout

import jax.numpy as jnp  # noqa: E402

from vmc.config import load_config  # noqa: E402
from vmc.sampler import make_sampler  # noqa: E402
from vmc.train import build, init_state, make_burn_in_step, make_train_step  # noqa: E402


def main(system: str, repeats: int, settings: list) -> dict:
    cfg = load_config(f"systems/{system}.yaml", overrides=tuple(settings))
    setup = build(cfg)
    state = init_state(setup, jax.random.PRNGKey(0))
    burn = make_burn_in_step(setup)
    mcmc = state.mcmc
    for i in range(3):
        mcmc, _ = burn(state.params, mcmc, jax.random.PRNGKey(100 + i))
    state = state._replace(mcmc=mcmc)
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
