"""`vmc resume RUN_DIR`: continue a run from its own config.yaml, or say that it has
finished and what would extend or re-evaluate it."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Optional

from vmc import checkpoint as ckpt, h5io
from vmc.config import Config
from vmc.errors import InputError
from vmc.precheck import check_resume_config, check_writable, trains
from vmc.run import EXIT_OK, train_run


def finished_message(cfg: Config, run_dir: pathlib.Path) -> Optional[str]:
    """The lines `vmc resume` prints for a finished run (trained to optim.steps and, unless
    eval.steps is 0, evaluated at that step), or None when there is something to do."""
    paths = ckpt.list_checkpoints(run_dir / "checkpoints")
    if not paths:
        return None
    step = int(paths[-1].stem.split("_")[1])
    untrained = not trains(cfg)   # the hf ansatz: its step-0 checkpoint is all there is
    if step < (0 if untrained else cfg.optim.steps):
        return None
    evaluated = {}
    if (run_dir / "eval.h5").is_file():
        with h5io.open_read(run_dir / "eval.h5") as f:
            evaluated = {k: int(f[k].attrs.get("checkpoint_step", -1)) for k in sorted(f)}
    groups = [k for k, v in evaluated.items() if v == step]
    if cfg.eval.steps > 0 and not groups:
        return None
    done = f"evaluated ({', '.join(groups)})" if groups else "not evaluated (eval.steps: 0)"
    more = 2 * step or 1000
    if cfg.eval.steps > 0:
        train = (f"`vmc resume {run_dir} --steps {more}` trains to step {more} and evaluates "
                 f"again (with a new seed)")
    else:   # a resume evaluates only with eval.steps > 0
        train = (f"`vmc resume {run_dir} --steps {more} --set eval.steps=2000` trains to step "
                 f"{more} and evaluates (without --set eval.steps it only trains: the run's "
                 f"eval.steps is 0)")
    evaluate = ("adds a longer evaluation of the final checkpoint" if groups
                else "evaluates the final checkpoint")
    if untrained:
        return (f"{run_dir}: finished: the {cfg.ansatz.name} ansatz has no parameters to "
                f"train, {done}; nothing to resume.\n"
                f"  `vmc eval {run_dir} --steps {max(4 * cfg.eval.steps, 2000)}` {evaluate} "
                f"(with a new seed)")
    return (f"{run_dir}: finished: {step} of {cfg.optim.steps} steps trained, {done}; "
            f"nothing to resume.\n  {train};\n"
            f"  `vmc eval {run_dir} --steps {max(4 * cfg.eval.steps, 2000)}` {evaluate} (with "
            f"a new seed)")


def resume_run(run_dir: pathlib.Path, *, steps: Optional[int] = None, overrides=(),
               log: Callable = print, setup_jax: Callable = lambda cfg: None) -> int:
    """`vmc resume RUN_DIR [--steps N]`: continue a run from its own config.yaml.

    `steps` sets optim.steps (the total); `overrides` are `--set KEY=VALUE` items (only the
    settings `--resume` may change, vmc.precheck.RESUMABLE). A finished run is left alone.

    Raises:
      InputError: not a run directory, a key given twice in its config.yaml, a setting that
        may not change, steps below the checkpoint's step.
    """
    from vmc.config import load_config
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"run_dir {str(run_dir)!r}: no config.yaml; not a run directory")
    if steps is not None and steps < 1:
        raise InputError(f"--steps: {steps} is not valid; valid: >= 1 (the total step count)")
    items = tuple(overrides) + ((f"optim.steps={steps}",) if steps is not None else ())
    cfg = load_config(run_dir / "config.yaml", overrides=items)
    if steps is not None and not trains(cfg):
        raise InputError(f"--steps: the run's ansatz has no parameters to train; valid: no "
                         f"--steps (`vmc eval {run_dir} --steps N` evaluates longer)")
    cfg = _eval_walkers_follow(cfg, load_config(run_dir / "config.yaml"), items, log)
    paths = ckpt.list_checkpoints(run_dir / "checkpoints")
    if paths:   # as `vmc run --resume` refuses them, also when the run has finished
        check_resume_config(cfg, run_dir)
        newest = int(paths[-1].stem.split("_")[1])
        if newest > cfg.optim.steps:
            raise InputError(f"optim.steps: {cfg.optim.steps} is below the checkpoint's step "
                             f"{newest}; valid: >= {newest}")
    setup_jax(cfg)
    message = finished_message(cfg, run_dir)
    if message is not None:
        log(message)
        if overrides:   # allowed (checked above), but there is nothing to apply them to
            keys = ", ".join(o.split("=", 1)[0] for o in overrides)
            log(f"  note: --set {keys} not applied: the run has finished. `vmc run CONFIG "
                f"--out {run_dir} --resume` with the changed file or --set evaluates again "
                f"with them (a changed reference included); `vmc eval {run_dir}` takes "
                f"--steps, --walkers, --burn-in")
        return EXIT_OK
    check_writable(run_dir, "run_dir")   # named as the user gave it (not `--out`)
    return train_run(cfg, run_dir, resume=True, log=log)


def _eval_walkers_follow(cfg: Config, stored: Config, items, log: Callable) -> Config:
    """eval.walkers defaults to sampler.walkers, but config.yaml stores the resolved
    number: a resume that changes sampler.walkers (and not eval.walkers) of a run whose
    eval.walkers was sampler.walkers lets it follow, as `vmc run CONFIG --resume` does."""
    keys = {i.split("=", 1)[0].strip() for i in items}
    if ("sampler.walkers" not in keys or "eval.walkers" in keys
            or stored.eval.walkers != stored.sampler.walkers
            or cfg.eval.walkers == cfg.sampler.walkers):
        return cfg
    log(f"resume: eval.walkers follows sampler.walkers: {cfg.sampler.walkers} "
        f"(was {stored.eval.walkers})")
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval,
                                                             walkers=cfg.sampler.walkers))
