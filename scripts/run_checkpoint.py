"""A trained run's checkpoint, ready to sample from: shared by the scripts that study a
run's frozen wavefunction (`outliers.py`, `ecp_rules.py`)."""

from __future__ import annotations

import pathlib


def load_checkpoint(run: pathlib.Path, step=None):
    """(cfg, setup, params, mcmc, step, sampler_step) of run folder `run`'s checkpoint at
    `step` (default the newest), with x64 on as in `vmc run`.

    `sampler_step(params, mcmc, key) -> (mcmc, pmove)` makes the run's `sampler.moves`
    Metropolis moves; `mcmc` holds the checkpoint's walkers (n_w, n_electrons, 3) bohr and
    proposal width.

    Raises:
      FileNotFoundError: no checkpoint at that step.
    """
    import jax
    from vmc import checkpoint as ckpt
    from vmc.config import load_config
    from vmc.sampler import make_sampler
    from vmc.train import build, init_state
    run = pathlib.Path(run)
    cfg = load_config(run / "config.yaml")
    jax.config.update("jax_enable_x64", True)
    setup = build(cfg)
    state = init_state(setup, jax.random.PRNGKey(0))
    folder = run / "checkpoints"
    path = ckpt.checkpoint_path(folder, step) if step else ckpt.list_checkpoints(folder)[-1]
    trees, attrs = ckpt.restore(path, {"params": state.params, "mcmc": state.mcmc})
    params, mcmc = trees["params"], trees["mcmc"]
    s = cfg.sampler
    init_mcmc, sampler_step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove,
                                           s.adapt_rate)
    mcmc = init_mcmc(params, mcmc.walkers, mcmc.width)
    return cfg, setup, params, mcmc, int(attrs["step"]), sampler_step
