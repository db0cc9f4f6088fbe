"""The stages of `vmc run` between setup and evaluation (vmc.run holds the rest).

`train`: pretraining (fresh runs), burn-in and the host training loop with its one rollback;
`without_training`: the 'hf' ansatz, which has no parameters, burns in and writes its
checkpoint at step 0; `restore`: a state from the newest valid checkpoint.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import numpy as np

from vmc import checkpoint as ckpt, h5io, parallel
from vmc.errors import InputError
from vmc.evaluate import resize_walkers
from vmc.loop import Outcome, run_loop, save_checkpoint
from vmc.optim.kfac_schema import from_schema2, schema2_layout
from vmc.sampler import MCMCState
from vmc.train import Setup, TrainState, build, init_state, make_burn_in_step, make_train_step


def run_keys(seed: int) -> dict:
    """The run's PRNG keys (init, burn_in, train, pretrain), all from `run.seed`."""
    root = jax.random.PRNGKey(seed)
    return {name: jax.random.fold_in(root, i)
            for i, name in enumerate(("init", "burn_in", "train", "pretrain"))}


def count(params) -> int:
    """Number of scalar parameters."""
    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))


def progress_bar(cfg, total: int, desc: str):
    """A tqdm bar on a terminal when `run.progress`, else None."""
    if not cfg.run.progress or not sys.stderr.isatty() or not parallel.is_writer():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def _bar_log(bar, log):
    if bar is None:
        return log
    def write(msg):
        with bar.external_write_mode():
            log(msg)
    return write


def current_layout(setup: Setup, params, attrs: dict, log=None):
    """A checkpoint's parameters in this version's layout, and whether they were converted.

    Checkpoints of schema 1 hold a FermiNet whose one-electron layers take their input in
    the old order (`vmc.ansatz.ferminet.params_from_schema1`); their rows are reordered,
    so the wavefunction is the same. Other ansätze and schema ≥ 2 pass unchanged.

    Args:
      setup: the run's Setup (its ansatz module); params: the restored pytree;
      attrs: the checkpoint's attributes (`schema_version`); log: one-line logger or None.
    Returns:
      (params, converted: bool).
    """
    from vmc.ansatz.ferminet import FermiNet, params_from_schema1
    if int(attrs.get("schema_version", 1)) >= 2 or not isinstance(setup.ansatz.module,
                                                                  FermiNet):
        return params, False
    if log is not None:
        log(f"checkpoint schema {attrs.get('schema_version')} (vmc "
            f"{attrs.get('code_version', '?')}): FermiNet one-electron kernel rows "
            f"reordered to schema {ckpt.SCHEMA_VERSION}'s layout (the same wavefunction)")
    return params_from_schema1(setup.ansatz.module, params), True


def check_history(path: pathlib.Path, start: int, log) -> None:
    """On resume from a checkpoint at step `start`: warn when train.h5 is missing or ends
    before step start − 1 (it was replaced or cut by hand), since its rows then have a gap.
    A file that cannot be read is left to the writer's error."""
    if start <= 0:
        return
    if not path.exists():
        log(f"warning: {path.name} is missing: the training history restarts at step {start}")
        return
    try:
        steps = h5io.read_stats(path)["step"]
    except (OSError, KeyError):
        return
    last = int(steps.max()) if len(steps) else -1
    if last < start - 1:
        gap = (f"step {last + 1} has" if last + 1 == start - 1
               else f"steps {last + 1}-{start - 1} have")
        log(f"warning: {path.name} ends at step {last} but the checkpoint is at step {start}: "
            f"{gap} no rows")


def restore(setup: Setup, run_dir: pathlib.Path, log,
             what: str = "--resume") -> tuple[TrainState, int, int]:
    """State from the newest valid checkpoint; walkers resized if the count changed.

    Checkpoints of schema ≤ 2 are read in their own optimizer-state layout and a KFAC state
    is converted (`vmc.optim.kfac_schema`); schema-1 FermiNet parameters are reordered
    (`current_layout`).

    Raises:
      InputError: no checkpoint matches this configuration's parameter shapes.
    """
    template = init_state(setup, jax.random.PRNGKey(0))

    def layout(attrs):   # the optimizer state as the checkpoint's schema stores it
        old = int(attrs.get("schema_version", 1)) < 3
        return {"params": template.params,
                "opt_state": schema2_layout(template.opt_state) if old else template.opt_state}

    d = run_dir / "checkpoints"
    path = ckpt.latest_valid(d, layout, log)
    if path is None:
        raise InputError(f"{what}: no valid checkpoint in {d}")
    trees, attrs = ckpt.restore(path, layout)
    params, converted = current_layout(setup, trees["params"], attrs, log)
    opt_state = from_schema2(trees["opt_state"])
    if opt_state is not trees["opt_state"]:
        log(f"checkpoint schema {attrs.get('schema_version')}: KFAC's damped inverses "
            f"converted to Cholesky factors (the same preconditioner up to rounding)")
    if converted:
        if jax.tree_util.tree_leaves(opt_state):
            log(f"{what}: the optimizer state of a schema-1 checkpoint is not reordered: "
                f"it starts afresh (not bit-identical to a run of the old version)")
        opt_state = setup.optimizer.init(params)
    raw = ckpt.read_tree_raw(path, "mcmc")
    walkers = raw["walkers"]
    n_w = setup.cfg.sampler.walkers
    if walkers.shape[0] != n_w:
        log(f"resume: checkpoint has {walkers.shape[0]} walkers, config wants {n_w}: "
            f"{'cycling through' if n_w > walkers.shape[0] else 'keeping the first'} "
            f"{n_w} of them")
        walkers = resize_walkers(walkers, n_w)
        logabs = jax.vmap(lambda x: setup.ansatz.log_psi(params, x)[1])(walkers)
    else:
        logabs = raw["logabs"]
    # every process reads the same file and places its own slice (any device/process layout)
    mcmc = MCMCState(parallel.shard_walkers(np.asarray(walkers)),
                     parallel.shard_walkers(np.asarray(logabs)),
                     jax.numpy.asarray(raw["width"]))
    log(f"{'resume' if what == '--resume' else 'evaluate'}: from {path.name} "
        f"(step {attrs['step']})")
    return (TrainState(params, opt_state, mcmc), int(attrs["step"]),
            int(attrs.get("rejected", 0)))


def burn_in(setup: Setup, state: TrainState, key, log) -> TrainState:
    """`sampler.burn_in` Metropolis steps with fixed parameters (the width adapts)."""
    steps = setup.cfg.sampler.burn_in
    if steps == 0:
        return state
    burn = make_burn_in_step(setup)
    mcmc, pmove = state.mcmc, 0.0
    for t in range(steps):
        mcmc, pmove = burn(state.params, mcmc, jax.random.fold_in(key, t))
    log(f"burn-in: {steps} steps, pmove {float(pmove):.3f}, width {float(mcmc.width):.3f} bohr")
    return state._replace(mcmc=mcmc)


def train(setup: Setup, state: TrainState, start: int, rejected: int, run_dir, resume,
           init_from, keys, log, phase, note=None):
    """Pretraining (fresh runs), burn-in and the training loop with its one rollback.

    `note`: a line logged when pretraining starts (the Hartree–Fock energy, vmc.precheck).

    Returns:
      (state, completed steps, Outcome); after DIVERGED the error line is already logged.
    """
    cfg = setup.cfg
    if resume and parallel.is_writer():
        check_history(run_dir / "train.h5", start, log)
    try:
        writer = parallel.stats_writer(run_dir / "train.h5")
        if resume:
            writer.truncate(start - 1)
    except OSError as err:   # h5py: a truncated or damaged file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(f"train.h5: cannot read {str(run_dir / 'train.h5')!r} ({first}); it "
                         f"holds the training history: move it aside (e.g. to "
                         f"train.h5.broken) to resume without that history") from None
    if not resume:
        if cfg.pretrain.steps > 0 and init_from is None:
            from vmc.pretrain import pretrain
            phase[0] = "pretraining"
            if note:
                log(note)
            state = pretrain(setup, state, keys["pretrain"], run_dir, log)
        phase[0] = "burn-in"
        state = burn_in(setup, state, keys["burn_in"], log)
    log(f"{cfg.name}: {setup.molecule.n_up} up + {setup.molecule.n_down} down electrons, "
        f"{count(state.params)} parameters, solver {cfg.optim.solver}, "
        f"{cfg.sampler.walkers} walkers, {cfg.optim.steps} steps")
    from vmc.ansatz import unused_cusp_note
    if cusp_note := unused_cusp_note(cfg.ansatz, setup.molecule):
        log(cusp_note)
    step_fn = make_train_step(setup)
    bar = progress_bar(cfg, cfg.optim.steps - start, "train")
    state, done, outcome, rejected = run_loop(
        step_fn, state, start=start, steps=cfg.optim.steps, train_key=keys["train"], cfg=cfg,
        run_dir=run_dir, writer=writer, log=_bar_log(bar, log), progress=bar, rejected=rejected)
    if outcome is Outcome.DIVERGED:
        state, done, outcome, rejected = _rollback(setup, run_dir, writer, keys, log, bar)
    if bar is not None:
        bar.close()
    if outcome is Outcome.DIVERGED:
        kept = ("the last checkpoint holds finite parameters"
                if ckpt.list_checkpoints(run_dir / "checkpoints") else "no checkpoint was written")
        log(f"error: training diverged: {cfg.run.max_bad_steps} consecutive non-finite steps "
            f"even after rolling back with half the learning rate; {kept}")
    return state, done, outcome


def without_training(setup: Setup, state: TrainState, run_dir, resume, keys, log, phase):
    """An ansatz without parameters ('hf'): no pretraining and no optimizer step.

    A fresh run burns in and writes its checkpoint at step 0 (for `vmc eval` and
    `--resume`) and train.h5 with an empty /stats table. Returns (state, 0).
    """
    cfg = setup.cfg
    log(f"{cfg.name}: {setup.molecule.n_up} up + {setup.molecule.n_down} down electrons, "
        f"ansatz {cfg.ansatz.name}: no parameters, so no pretraining or optimization "
        f"(optim.*, pretrain.steps unused); {cfg.eval.walkers} walkers")
    if not resume:
        phase[0] = "burn-in"
        state = burn_in(setup, state, keys["burn_in"], log)
        save_checkpoint(run_dir, state, 0, cfg, cfg.run.keep_checkpoints, {"rejected": 0})
    if parallel.is_writer() and not (run_dir / "train.h5").exists():
        h5io.write_group(run_dir / "train.h5", "stats", {},
                         {"note": f"ansatz {cfg.ansatz.name}: nothing to train"})
    return state, 0


def _rollback(setup: Setup, run_dir, writer, keys, log, bar):
    """Roll back once to the last checkpoint with half the learning rate."""
    cfg = setup.cfg
    log(f"warning: {cfg.run.max_bad_steps} consecutive non-finite steps; rolling back to the "
        f"last checkpoint with half the learning rate")
    lower = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr / 2))
    setup2 = build(lower, hf=setup.hf)
    if not ckpt.list_checkpoints(run_dir / "checkpoints"):
        state = burn_in(setup2, init_state(setup2, keys["init"]), keys["burn_in"], log)
        start, rejected = 0, 0
    else:
        state, start, rejected = restore(setup2, run_dir, log)
    writer.truncate(start - 1)
    return run_loop(make_train_step(setup2), state, start=start, steps=lower.optim.steps,
                    train_key=keys["train"], cfg=lower, run_dir=run_dir, writer=writer,
                    log=_bar_log(bar, log), progress=bar, rejected=rejected)
