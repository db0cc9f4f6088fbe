"""`vmc run` and `vmc eval`: run directories, training, evaluation and summary.json.

Exit codes (also in README): 0 finished; 2 bad input (nothing written); 3 diverged (too many
consecutive non-finite steps even after one rollback); 75 stopped by a signal or
run.max_minutes after writing a checkpoint (requeue and `--resume`); 1 any other error.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np

import vmc
from vmc import analysis, checkpoint as ckpt, h5io
from vmc.config import Config, dump_yaml
from vmc.errors import InputError
from vmc.evaluate import evaluate, resize_walkers
from vmc.loop import Outcome, SignalFlag, run_loop
from vmc.sampler import MCMCState
from vmc.train import Setup, TrainState, build, init_state, make_burn_in_step, make_train_step

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 75
EXACT_KINDS = ("exact", "estimated exact")


def provenance() -> dict:
    """Versions and device of this process (package, git commit, jax, flax, folx)."""
    import flax
    import folx
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=pathlib.Path(vmc.__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"vmc_version": vmc.__version__, "git_commit": commit, "jax_version": jax.__version__,
            "flax_version": flax.__version__, "folx_version": getattr(folx, "__version__", None),
            "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count()}


def holds_run(run_dir: pathlib.Path) -> bool:
    """Whether `run_dir` already holds (part of) a run."""
    return any((run_dir / n).exists() for n in ("config.yaml", "train.h5", "checkpoints",
                                                  "summary.json"))


# Settings that may change when a run is resumed; every other resolved setting must match
# the run's config.yaml (a different molecule, network, solver or seed is a different run).
RESUMABLE = ("name", "molecule.reference.", "optim.steps", "sampler.walkers", "eval.",
             "run.log_every", "run.progress", "run.checkpoint_every", "run.checkpoint_minutes",
             "run.keep_checkpoints", "run.max_minutes", "run.max_bad_steps")


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def check_resume_config(cfg: Config, run_dir: pathlib.Path) -> None:
    """Refuse to resume `run_dir` with settings other than those in RESUMABLE changed.

    Raises:
      InputError: naming the first differing settings, their stored and new values.
    """
    import yaml
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        return
    try:
        stored = _flatten(yaml.safe_load(stored_path.read_text()) or {})
    except yaml.YAMLError:
        raise InputError(f"--resume: {str(stored_path)!r} is not valid YAML") from None
    new = _flatten(yaml.safe_load(dump_yaml(cfg)))
    diffs = [k for k in new if k in stored and new[k] != stored[k]
             and not any(k == a or (a.endswith(".") and k.startswith(a)) for a in RESUMABLE)]
    if diffs:
        shown = "; ".join(f"{k}: {stored[k]!r} there, {new[k]!r} now" for k in diffs[:3])
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise InputError(f"--resume: settings differ from {str(stored_path)!r}: {shown}{more}; "
                         f"only optim.steps, sampler.walkers, eval.* and run.* (not seed, x64) "
                         f"may change on resume")


class Interrupted(Exception):
    """A signal arrived outside the training loop (pretraining, burn-in or evaluation)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _RaiseOnSignal(SignalFlag):
    """Turn SIGTERM/SIGINT/SIGUSR1 into `Interrupted` (the training loop installs its own
    handlers, which finish the step and checkpoint, and restores these afterwards)."""

    def _handle(self, signum, frame):
        raise Interrupted(signum)


def _interrupted_message(err: Interrupted, phase: str, again: str = "`--resume`") -> str:
    import signal
    name = signal.Signals(err.signum).name
    if phase == "evaluation":
        return (f"stopped by {name} during evaluation; the final checkpoint is written: "
                f"{again} evaluates again")
    return (f"stopped by {name} during {phase}, before the first checkpoint; {again} "
            f"starts the run again")


def _keys(seed: int):
    root = jax.random.PRNGKey(seed)
    return {name: jax.random.fold_in(root, i)
            for i, name in enumerate(("init", "burn_in", "train", "pretrain"))}


def _restore(setup: Setup, run_dir: pathlib.Path, log,
             what: str = "--resume") -> tuple[TrainState, int, int]:
    """State from the newest valid checkpoint; walkers resized if the count changed.

    Raises:
      InputError: no checkpoint matches this configuration's parameter shapes.
    """
    template = init_state(setup, jax.random.PRNGKey(0))
    d = run_dir / "checkpoints"
    path = ckpt.latest_valid(d, {"params": template.params, "opt_state": template.opt_state})
    if path is None:
        raise InputError(f"{what}: no valid checkpoint in {d}")
    trees, attrs = ckpt.restore(path, {"params": template.params,
                                       "opt_state": template.opt_state})
    raw = ckpt.read_tree_raw(path, "mcmc")
    walkers = raw["walkers"]
    n_w = setup.cfg.sampler.walkers
    if walkers.shape[0] != n_w:
        log(f"resume: checkpoint has {walkers.shape[0]} walkers, config wants {n_w}: "
            f"{'cycling through' if n_w > walkers.shape[0] else 'keeping the first'} "
            f"{n_w} of them")
        walkers = resize_walkers(walkers, n_w)
        logabs = jax.vmap(lambda x: setup.ansatz.log_psi(trees["params"], x)[1])(walkers)
    else:
        logabs = raw["logabs"]
    mcmc = MCMCState(jax.numpy.asarray(walkers), jax.numpy.asarray(logabs),
                     jax.numpy.asarray(raw["width"]))
    log(f"{'resume' if what == '--resume' else 'evaluate'}: from {path.name} "
        f"(step {attrs['step']})")
    return (TrainState(trees["params"], trees["opt_state"], mcmc), int(attrs["step"]),
            int(attrs.get("rejected", 0)))


def _progress(cfg, total: int, desc: str):
    if not cfg.run.progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def _burn_in(setup: Setup, state: TrainState, key, log) -> TrainState:
    steps = setup.cfg.sampler.burn_in
    if steps == 0:
        return state
    burn = make_burn_in_step(setup)
    mcmc, pmove = state.mcmc, 0.0
    for t in range(steps):
        mcmc, pmove = burn(state.params, mcmc, jax.random.fold_in(key, t))
    log(f"burn-in: {steps} steps, pmove {float(pmove):.3f}, width {float(mcmc.width):.3f} bohr")
    return state._replace(mcmc=mcmc)


def train_run(cfg: Config, run_dir: pathlib.Path, *, resume: bool = False,
              init_from: Optional[pathlib.Path] = None, log: Callable = print) -> int:
    """Train (or resume), evaluate and write summary.json. Returns the exit code.

    Raises:
      InputError: the run directory already holds a run (without `resume`), or bad input.
    """
    wall_start = time.time()
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {str(run_dir)!r}: exists and is not a directory")
    if holds_run(run_dir) and not resume:
        raise InputError(f"--out {str(run_dir)!r}: already holds a run; use --resume to "
                         f"continue it or choose another --out")
    if resume:
        if not holds_run(run_dir):
            raise InputError(f"--resume: {str(run_dir)!r} holds no run to resume")
        if ckpt.list_checkpoints(run_dir / "checkpoints"):
            check_resume_config(cfg, run_dir)
        else:
            log(f"resume: no checkpoint yet in {run_dir} (stopped before the first one); "
                f"starting from the beginning")
            resume = False
    with _RaiseOnSignal():
        phase = ["setup"]
        try:
            return _train_run(cfg, run_dir, resume, init_from, log, wall_start, phase)
        except Interrupted as err:
            log(_interrupted_message(err, phase[0]))
            return EXIT_INTERRUPTED


def _train_run(cfg, run_dir, resume, init_from, log, wall_start, phase) -> int:
    setup = build(cfg)
    keys = _keys(cfg.run.seed)
    if resume:
        state, start, rejected = _restore(setup, run_dir, log)
        if start > cfg.optim.steps:
            raise InputError(f"optim.steps: {cfg.optim.steps} is below the checkpoint's step "
                             f"{start}; valid: >= {start}")
    else:
        state, start, rejected = init_state(setup, keys["init"]), 0, 0
        if init_from is not None:
            from vmc.warmstart import warm_start
            state = warm_start(setup, state, pathlib.Path(init_from), log)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {str(run_dir)!r}: cannot create it ({err.strerror})") from None
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    writer = h5io.StatsWriter(run_dir / "train.h5")
    if resume:
        writer.truncate(start - 1)
    else:
        if cfg.pretrain.steps > 0 and cfg.ansatz.name != "hf" and init_from is None:
            from vmc.pretrain import pretrain
            phase[0] = "pretraining"
            state = pretrain(setup, state, keys["pretrain"], run_dir, log)
        phase[0] = "burn-in"
        state = _burn_in(setup, state, keys["burn_in"], log)
    log(f"{cfg.name}: {setup.molecule.n_up} up + {setup.molecule.n_down} down electrons, "
        f"{_count(state.params)} parameters, solver {cfg.optim.solver}, "
        f"{cfg.sampler.walkers} walkers, {cfg.optim.steps} steps")
    step_fn = make_train_step(setup)
    bar = _progress(cfg, cfg.optim.steps - start, "train")
    state, done, outcome, rejected = run_loop(
        step_fn, state, start=start, steps=cfg.optim.steps, train_key=keys["train"], cfg=cfg,
        run_dir=run_dir, writer=writer, log=_bar_log(bar, log), progress=bar, rejected=rejected)
    if outcome is Outcome.DIVERGED:
        state, done, outcome, rejected = _rollback(setup, run_dir, writer, keys, log, bar)
    if bar is not None:
        bar.close()
    if outcome is Outcome.INTERRUPTED:
        return EXIT_INTERRUPTED
    if outcome is Outcome.DIVERGED:
        kept = ("the last checkpoint holds finite parameters"
                if ckpt.list_checkpoints(run_dir / "checkpoints") else "no checkpoint was written")
        log(f"error: training diverged: {cfg.run.max_bad_steps} consecutive non-finite steps "
            f"even after rolling back with half the learning rate; {kept}")
        return EXIT_DIVERGED
    phase[0] = "evaluation"
    result = None
    if cfg.eval.steps > 0:
        result = run_evaluation(setup, state.params, state.mcmc, run_dir, steps=cfg.eval.steps,
                                walkers=cfg.eval.walkers, seed=cfg.eval.seed,
                                burn_in=cfg.eval.burn_in, checkpoint_step=done, log=log)
    else:
        log("evaluation skipped (eval.steps=0); `vmc eval` evaluates the final checkpoint")
    write_summary(setup, run_dir, state.params, result, wall_s=time.time() - wall_start,
                  seed=cfg.eval.seed, log=log)
    return EXIT_OK


def _rollback(setup: Setup, run_dir, writer, keys, log, bar):
    """Roll back once to the last checkpoint with half the learning rate."""
    cfg = setup.cfg
    log(f"warning: {cfg.run.max_bad_steps} consecutive non-finite steps; rolling back to the "
        f"last checkpoint with half the learning rate")
    lower = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr / 2))
    setup2 = build(lower, hf=setup.hf)
    if not ckpt.list_checkpoints(run_dir / "checkpoints"):
        state = _burn_in(setup2, init_state(setup2, keys["init"]), keys["burn_in"], log)
        start, rejected = 0, 0
    else:
        state, start, rejected = _restore(setup2, run_dir, log)
    writer.truncate(start - 1)
    return run_loop(make_train_step(setup2), state, start=start, steps=lower.optim.steps,
                    train_key=keys["train"], cfg=lower, run_dir=run_dir, writer=writer,
                    log=_bar_log(bar, log), progress=bar, rejected=rejected)


def _bar_log(bar, log):
    if bar is None:
        return log
    return lambda msg: bar.write(msg)


def _count(params) -> int:
    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))


def run_evaluation(setup: Setup, params, mcmc: MCMCState, run_dir: pathlib.Path, *, steps: int,
                   walkers: int, seed: int, burn_in: int, checkpoint_step: int,
                   log: Callable = print):
    """Frozen-parameter evaluation into a new eval.h5 group; returns (group, EvalResult)."""
    start_walkers = resize_walkers(np.asarray(mcmc.walkers), walkers)
    bar = _progress(setup.cfg, steps + burn_in, "eval")
    result = evaluate(setup, params, start_walkers, float(mcmc.width), steps=steps,
                      burn_in=burn_in, key=jax.random.PRNGKey(seed),
                      progress=(lambda i, n: bar.update(1)) if bar else None)
    if bar is not None:
        bar.close()
    group = h5io.next_group_name(run_dir / "eval.h5")
    h5io.write_group(run_dir / "eval.h5", group,
                     {"energy": result.energy, "variance": result.variance,
                      "pmove": result.pmove},
                     {"seed": seed, "walkers": walkers, "steps": steps, "burn_in": burn_in,
                      "checkpoint_step": checkpoint_step, "seconds": result.seconds})
    log(f"evaluation {group}: {steps} steps x {walkers} walkers in {result.seconds:.1f} s")
    return group, result


def write_summary(setup: Setup, run_dir: pathlib.Path, params, evaluation, *, wall_s: float,
                  seed: int, log: Callable = print) -> dict:
    """Write summary.json from the newest evaluation and the training tail; returns it.

    evaluation: (group, EvalResult) from `run_evaluation`, or None when this call evaluated
    nothing (eval.steps = 0): the energy fields are then null and the list of earlier
    evaluations is kept.
    """
    cfg = setup.cfg
    old = {}
    if (run_dir / "summary.json").exists():
        old = json.loads((run_dir / "summary.json").read_text())
    tail, _ = analysis.train_tail(h5io.read_stats(run_dir / "train.h5"))
    ref = cfg.molecule.reference
    entry, variance = {}, None
    if evaluation is not None:
        group, result = evaluation
        rb = analysis.reblock(result.energy) if len(result.energy) >= 16 else None
        energy = rb.mean if rb else float(np.mean(result.energy)) if len(result.energy) else None
        entry = {"group": group, "seed": seed, "energy_ha": energy,
                 "energy_stderr_ha": rb.stderr if rb else None,
                 "steps": len(result.energy), "walkers": int(result.walkers.shape[0]),
                 "block_size": rb.block_size if rb else None, "tau": rb.tau if rb else None,
                 "plateau": rb.plateau if rb else None}
        variance = float(np.mean(result.variance)) if len(result.variance) else None
    energy = entry.get("energy_ha")
    deviation = (None if energy is None or ref.energy is None
                 else 1000.0 * (energy - ref.energy))
    summary = {
        "system": cfg.name,
        "energy_ha": energy,
        "energy_stderr_ha": entry.get("energy_stderr_ha"),
        "reference_ha": ref.energy,
        "reference_kind": ref.kind if ref.energy is not None else None,
        "reference_source": ref.source or None,
        "error_mha": deviation if ref.kind in EXACT_KINDS else None,
        "deviation_mha": deviation,
        "block_size": entry.get("block_size"), "tau": entry.get("tau"),
        "plateau": entry.get("plateau"),
        "variance_ha2": variance,
        "train_energy_ha": tail.mean if tail else None,
        "train_energy_stderr_ha": tail.stderr if tail else None,
        "train_steps": cfg.optim.steps, "eval_steps": entry.get("steps", 0),
        "walkers": cfg.sampler.walkers, "n_params": _count(params),
        "n_up": setup.molecule.n_up, "n_down": setup.molecule.n_down,
        "ansatz": cfg.ansatz.name, "solver": cfg.optim.solver,
        "dtype": "float64" if cfg.run.x64 else "float32", "seed": cfg.run.seed,
        "wall_s": wall_s,
        **provenance(),
        "evaluations": old.get("evaluations", []) + ([entry] if entry else []),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    err = "" if deviation is None else f", {'error' if ref.kind in EXACT_KINDS else 'difference'} {deviation:+.3f} mHa"
    if energy is not None:
        refs = "" if ref.energy is None else f" (reference {ref.energy})"
        log(f"energy {energy:.6f} Ha ± {1000 * (entry.get('energy_stderr_ha') or float('nan')):.3f} mHa"
            f"{err}{refs}; wall {wall_s:.0f} s")
    return summary


def eval_run(run_dir: pathlib.Path, *, steps: Optional[int] = None,
             walkers: Optional[int] = None, seed: Optional[int] = None,
             burn_in: Optional[int] = None, log: Callable = print) -> int:
    """`vmc eval`: evaluate the newest valid checkpoint with a fresh seed; update summary.json.

    Raises:
      InputError: not a run directory, or no valid checkpoint.
    """
    from vmc.config import load_config
    wall_start = time.time()
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"run_dir {str(run_dir)!r}: no config.yaml; not a run directory")
    cfg = load_config(run_dir / "config.yaml")
    for name, v, lo in (("--steps", steps, 16), ("--walkers", walkers, 2),
                        ("--burn-in", burn_in, 0)):
        if v is not None and v < lo:
            raise InputError(f"{name}: {v} is not valid; valid: >= {lo}"
                             + (" (reblocking needs 16 samples)" if lo == 16 else ""))
    if cfg.eval.steps == 0 and steps is None:
        steps = 2000
    with _RaiseOnSignal():
        try:
            return _eval_run(cfg, run_dir, steps, walkers, seed, burn_in, log, wall_start)
        except Interrupted as err:
            log(_interrupted_message(err, "evaluation", again="`vmc eval`"))
            return EXIT_INTERRUPTED


def _eval_run(cfg, run_dir, steps, walkers, seed, burn_in, log, wall_start) -> int:
    setup = build(cfg)
    state, step, _ = _restore(setup, run_dir, log, what="vmc eval")
    old = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    used = {e.get("seed") for e in old.get("evaluations", [])} | {cfg.eval.seed}
    if seed is None:
        seed = max(s for s in used if s is not None) + 1
    result = run_evaluation(setup, state.params, state.mcmc, run_dir,
                            steps=cfg.eval.steps if steps is None else steps,
                            walkers=walkers or cfg.eval.walkers, seed=seed,
                            burn_in=cfg.eval.burn_in if burn_in is None else burn_in,
                            checkpoint_step=step, log=log)
    write_summary(setup, run_dir, state.params, result, wall_s=time.time() - wall_start,
                  seed=seed, log=log)
    return EXIT_OK
