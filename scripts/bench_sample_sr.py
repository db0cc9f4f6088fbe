"""Sample-space SR update: the per-leaf float64-chunked path against a dense-Ō reference.

Times `make_direct_sr(cfg, log_psi, "sample").update` (per-leaf Jacobian in the network's
dtype, ŌŌᵀ and Ōᵀy accumulated in float64: `vmc.optim.sr.JacobianBlocks`) side by side,
in one process, with the reference that ravels the parameters, forms Ō densely and copies it
to float64 (`centred_jacobian` + `sample_space_direction`), on the same parameters, walkers
and energies. Prints seconds per update for both, their ratio, and the relative difference
of the two parameter steps (they solve the same system).

    python scripts/bench_sample_sr.py                       # Li: default and benchmark nets
    python scripts/bench_sample_sr.py --repeats 10
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from vmc.config import config_from_dict  # noqa: E402
from vmc.optim.sr import (apply_direction, centred_energies, centred_jacobian,  # noqa: E402
                          make_direct_sr, sample_space_direction)
from vmc.train import build, init_state  # noqa: E402

NETWORKS = {"default (32/8 x 3, 8 dets)": {},
            "benchmark (128/16 x 3, 8 dets)": {"hidden_one": [128, 128, 128],
                                               "hidden_two": [16, 16, 16]}}


def _reference(cfg, log_psi):
    """The dense-Ō sample-space update (no clipping or norm constraint: both are off here)."""
    def update(params, walkers, e_l):
        eps = centred_energies(e_l.astype(jnp.float64))
        obar, unravel = centred_jacobian(log_psi, params, walkers)
        d = sample_space_direction(obar, eps, cfg.damping)
        return apply_direction(params, unravel(d.astype(obar.dtype)), cfg.lr, 1.0)[0]
    return update


def _time(fn, repeats):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / repeats, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--walkers", type=int, default=256)
    args = p.parse_args(argv)
    print(f"{'network':32s} {'params':>8s} {'blocks s':>9s} {'dense-Ō s':>10s} {'ratio':>6s} "
          f"{'rel diff':>9s}")
    for label, ansatz in NETWORKS.items():
        data = {"atoms": [{"symbol": "Li", "position": [0, 0, 0]}], "spin": 1,
                "ansatz": {"name": "ferminet", **ansatz},
                "sampler": {"walkers": args.walkers},
                "optim": {"solver": "sample", "clip": None, "norm_constraint": None,
                          "lr_decay_steps": 1e15}}
        cfg = config_from_dict(data, name="Li")
        setup = build(cfg)
        state = init_state(setup, jax.random.PRNGKey(0))
        walkers = state.mcmc.walkers
        e_l = jax.jit(setup.batched_local_energy)(state.params, walkers).astype(jnp.float64)
        new = jax.jit(lambda p, w, e: make_direct_sr(cfg.optim, setup.ansatz.log_psi,
                                                     "sample").update(p, (), w, e, 0)[0])
        ref = jax.jit(_reference(cfg.optim, setup.ansatz.log_psi))
        t_new, p_new = _time(lambda: new(state.params, walkers, e_l), args.repeats)
        t_ref, p_ref = _time(lambda: ref(state.params, walkers, e_l), args.repeats)
        theta = np.asarray(ravel_pytree(state.params)[0], np.float64)
        s_new = theta - np.asarray(ravel_pytree(p_new)[0], np.float64)
        s_ref = theta - np.asarray(ravel_pytree(p_ref)[0], np.float64)
        diff = np.linalg.norm(s_new - s_ref) / np.linalg.norm(s_ref)
        print(f"{label:32s} {theta.size:8d} {t_new:9.3f} {t_ref:10.3f} {t_ref / t_new:6.2f} "
              f"{diff:9.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
