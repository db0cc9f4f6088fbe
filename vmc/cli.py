"""Command line: `vmc run`, `vmc resume`, `vmc check`, `vmc presets`, `vmc eval`, `vmc analyze`.

Bad input prints one line `error: ...` to stderr and exits with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys

from vmc.errors import OneLineParser as _Parser   # one-line argument errors, exit code 2


def _integer(text: str) -> int:
    """An integer flag written as people write numbers: 3e3 or 3000.0 is 3000."""
    from vmc.config_parse import integral
    value = integral(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    import vmc
    p = _Parser(prog="vmc", description="Neural-network variational Monte Carlo for molecules.")
    p.add_argument("--version", action="version", version=f"vmc {vmc.__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train a wavefunction, evaluate it, write summary.json")
    r.add_argument("config", help="molecule YAML file, or an .xyz file (Å) with --charge/--spin")
    r.add_argument("--out", help="run directory (default runs/<config stem>)")
    _settings_args(r)
    r.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out "
                        "(`vmc resume RUN_DIR` needs no config)")
    r.add_argument("--init-from", metavar="RUN_DIR|CHECKPOINT",
                   help="warm start: parameters (and walkers) from another run's newest "
                        "checkpoint or from RUN_DIR/checkpoints/ckpt_NNNNNN.h5 (no "
                        "pretraining)")
    _distributed_args(r)
    rs = sub.add_parser("resume", help="continue a run from its own config.yaml")
    rs.add_argument("run_dir", help="run directory written by `vmc run`")
    rs.add_argument("--steps", type=_integer, metavar="N",
                    help="train to N steps in all (optim.steps); default: the run's own")
    rs.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="change a setting that a resume may change "
                    "(sampler.walkers, eval.*, run.* but seed and x64, the reference; any "
                    "setting before the run's first checkpoint: it restarts from step 0)")
    _distributed_args(rs)
    c = sub.add_parser("check", help="validate a config and print what a run would do")
    c.add_argument("config", help="molecule YAML file, or an .xyz file (Å) with --charge/--spin")
    _settings_args(c)
    pr = sub.add_parser("presets", help="print what each preset sets (or the named ones)")
    pr.add_argument("names", nargs="*", metavar="NAME", help="presets to print (default all)")
    e = sub.add_parser("eval", help="frozen-parameter evaluation of a run's newest checkpoint")
    e.add_argument("run_dir", help="run directory written by `vmc run`")
    e.add_argument("--steps", type=_integer, help="recorded steps (default eval.steps, or 2000 "
                   "when that is 0); at least 16")
    e.add_argument("--walkers", type=_integer, help="walkers (default eval.walkers)")
    e.add_argument("--seed", type=int, help="random seed (default: one above every seed used "
                   "so far); a seed already in eval.h5 is refused")
    e.add_argument("--burn-in", type=_integer, help="unrecorded Metropolis steps first, with the "
                   "width adapting (default eval.burn_in)")
    e.add_argument("--target-stderr-mha", type=float, metavar="MHA",
                   help="go on past --steps until the reblocked error bar is at most this "
                   "(default: the run's eval.target_stderr_mha)")
    e.add_argument("--max-steps", type=_integer, help="cap with a target (default eval.max_steps)")
    e.add_argument("--observables", metavar="LIST",
                   help="comma-separated, beside the energy: s2, dipole, density, forces "
                   "(default: the run's eval.observables)")
    _distributed_args(e)
    sub.add_parser("analyze", help="reblocked energies, warnings, tables, CSV and plots of "
                   "runs (`vmc analyze --help`)", add_help=False)
    li = sub.add_parser("launch-info", help="print how this process would join a multi-process "
                        "run (from the flags, VMC_* or SLURM), without starting anything")
    _distributed_args(li)
    return p


def _settings_args(p):
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a setting, e.g. optim.lr=0.1 "
                   "(repeatable)")
    p.add_argument("--preset", help="named settings: paper (FermiNet's sizes, for GPUs), "
                   "tiny (smoke tests)")
    p.add_argument("--charge", type=int, help="total charge (for an .xyz geometry)")
    p.add_argument("--spin", type=int, help="2S = n_up - n_down (for an .xyz geometry)")


def _distributed_args(p):
    g = p.add_argument_group("several processes (default: SLURM's variables under srun, or "
                             "VMC_COORDINATOR, VMC_NUM_PROCESSES, VMC_PROCESS_ID)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0's coordination service")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in all")
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0 … N-1")


def _setup_jax(args=None, cfg=None):
    """Process-wide JAX settings: float64 available (the network dtype is set per run), and
    the distributed runtime when launched as several processes (vmc.parallel)."""
    import jax
    jax.config.update("jax_enable_x64", True)
    from vmc.compile_cache import enable
    enable(cfg.run.compile_cache if cfg is not None else "auto")
    from vmc.parallel import DEFAULT_HEARTBEAT_S, setup_distributed
    heartbeat = cfg.run.heartbeat_seconds if cfg is not None else DEFAULT_HEARTBEAT_S
    setup_distributed(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                      getattr(args, "process_id", None), heartbeat_s=heartbeat)


def main(argv=None) -> int:
    """Entry point of the `vmc` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from vmc.cpu_env import configure_process
    configure_process()   # before anything loads JAX, SciPy or PySCF
    if argv and argv[0] == "analyze":
        from vmc.analyze import main as analyze_main
        return analyze_main(argv[1:])
    args = _parser().parse_args(argv)
    from vmc.errors import InputError
    from vmc.parallel import DistributedError
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "presets":
            from vmc.size_rule import describe_presets
            print(describe_presets(args.names))
            return 0
        if args.command == "run":
            return _run(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "launch-info":
            import json
            from vmc.parallel import launch_plan
            print(json.dumps(launch_plan(args.coordinator, args.num_processes,
                                         args.process_id)))
            return 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        _LOGS and _LOGS[-1].error(f"error: {err}")
        return 2
    except DistributedError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        _LOGS and _LOGS[-1].error(f"error: {err}")
        return 1
    except Exception as err:  # noqa: BLE001
        _lost_peer(err)
        line = _file_system_error(err)
        if line is None:
            raise
        print(line, file=sys.stderr, flush=True)
        try:
            _LOGS and _LOGS[-1].error(line)
        except OSError:   # the same file system may refuse run.log too
            pass
        return 1
    return 2


def _file_system_error(err: Exception):
    """One `error:` line for a write that the file system refused (disk full, quota,
    read-only, permission), or None for any other error. The run's files are written
    atomically (temporary file, then rename), so what was written before is intact."""
    import errno
    import re
    text = str(err)
    # h5py reports a failed write at close as RuntimeError ("... errno = 28 ...")
    if not isinstance(err, OSError) and not (isinstance(err, RuntimeError)
                                             and "errno = " in text):
        return None
    if not isinstance(err, OSError):
        err = OSError(text)
    reasons = ((errno.ENOSPC, "No space left on device", "no space left on device"),
               (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
               (errno.EROFS, "Read-only file system", "read-only file system"),
               (errno.EACCES, "Permission denied", "permission denied"))
    for code, needle, reason in reasons:
        if err.errno == code or needle in text:
            where = str(err.filename or next(
                (w for w in text.replace("'", " ").replace(",", " ").split() if "/" in w), ""))
            # a temporary file .NAME.<host>.<pid>...tmp stands for NAME
            folder, _, base = where.rpartition("/")
            final = re.match(r"^\.(.+?\.(?:h5|json|yaml|csv))\.", base)
            if final:
                where = f"{folder}/{final.group(1)}" if folder else final.group(1)
            return (f"error: cannot write {where or 'a run file'}: {reason}; the files written "
                    f"before (checkpoints, train.h5, eval.h5) are intact: make room or fix the "
                    f"folder, then run the command again (`vmc resume RUN_DIR` continues a run)")
    return None


def _lost_peer(err: Exception) -> None:
    """In a multi-process run, a failed collective means another process died or hung: say
    so in one line and exit 1 at once (JAX's own shutdown would abort the process after
    waiting for the lost peer)."""
    import jax
    if not (jax.process_count() > 1 and type(err).__name__ in ("JaxRuntimeError",
                                                               "XlaRuntimeError")):
        return
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    print(f"error: process {jax.process_index()} of {jax.process_count()}: a collective with "
          f"the other processes failed (one of them probably died or was killed): {first}",
          file=sys.stderr, flush=True)
    os._exit(1)


_LOGS: list = []   # the RunLog of this call (so that an error line reaches run.log too)


def _run_log(run_dir):
    from vmc.runlog import RunLog
    _LOGS.append(RunLog(run_dir))
    return _LOGS[-1]


def _load(args):
    from vmc.config import load_config
    return load_config(args.config, preset=args.preset, overrides=tuple(args.overrides),
                       charge=args.charge, spin=args.spin)


def _run(args) -> int:
    cfg = _load(args)
    out = pathlib.Path(args.out) if args.out else pathlib.Path("runs") / pathlib.Path(args.config).stem
    _setup_jax(args, cfg)
    from vmc.run import train_run
    return train_run(cfg, out, resume=args.resume,
                     init_from=pathlib.Path(args.init_from) if args.init_from else None,
                     log=_run_log(out))


def _resume(args) -> int:
    from vmc.resume import resume_run
    run_dir = pathlib.Path(args.run_dir)
    return resume_run(run_dir, steps=args.steps, overrides=tuple(args.overrides),
                      log=_run_log(run_dir), setup_jax=lambda cfg: _setup_jax(args, cfg))


def _eval(args) -> int:
    _setup_jax(args)
    run_dir = pathlib.Path(args.run_dir)
    if (run_dir / "config.yaml").is_file():   # else eval_run says it is no run directory
        from vmc.config import load_config
        from vmc.precheck import check_devices
        cfg = load_config(run_dir / "config.yaml")
        check_devices({"--walkers": args.walkers} if args.walkers
                      else {"eval.walkers": cfg.eval.walkers})
    from vmc.parallel import cpu_devices_warning
    from vmc.run import eval_run
    log = _run_log(run_dir)
    line = cpu_devices_warning()
    if line:
        log(line)
    return eval_run(run_dir, steps=args.steps, walkers=args.walkers,
                    seed=args.seed, burn_in=args.burn_in, log=log,
                    observables=args.observables, target_stderr_mha=args.target_stderr_mha,
                    max_steps=args.max_steps)


def _check(args) -> int:
    cfg = _load(args)
    _setup_jax()
    from vmc.check import describe
    from vmc.errors import InputError
    from vmc.precheck import check_run_input
    from vmc.precheck import hartree_fock
    lines = []
    checked = check_run_input(cfg, resume=False, log=lines.append)
    hf = checked.hf
    if hf is None:   # the run needs none (no pretraining), but the energy is worth seeing
        try:
            hf = hartree_fock(cfg, log=lambda _: None)
        except InputError as err:
            lines.append(f"hartree-fock: not available ({err})")
    print(describe(cfg, hf=hf, notes=lines))
    from vmc.size_rule import file_choices
    print("\n" + file_choices(cfg, args.config, preset=args.preset, overrides=args.overrides))
    return 0


def console() -> None:
    """The `vmc` console script (and `python -m vmc.cli`): `main`, then exit with its code.

    A run stopped by a signal (exit code 75) in one process leaves through `os._exit` after
    flushing the console: the interpreter's own teardown, after an interrupted JAX
    computation, could end the process with a segmentation fault (-11) instead of 75, and
    everything the run writes (checkpoints, train.h5, run.log, summary.json) is closed by
    then. Several processes exit normally (the distributed runtime's shutdown).
    """
    early = (_stop_early_on_signals() if len(sys.argv) > 1
             and sys.argv[1] in ("run", "resume", "eval") else {})
    code = main()
    for sig, handler in early.items():   # the run is over: not "before the run began"
        signal.signal(sig, handler)
    if code == 75 and "jax" in sys.modules and sys.modules["jax"].process_count() == 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _stop_early_on_signals() -> dict:
    """Until a run installs its own handlers (`vmc.run`), SIGTERM, SIGINT or SIGUSR1 (a
    preemption at job start, while JAX is still being imported) exits 75 with one line, as
    a signal in any later phase does, so a batch script requeues the job instead of
    dropping it (exit 130/143 otherwise). Nothing of the run is written by then. Returns
    the handlers it replaced."""
    def stop(signum, frame):
        name = signal.Signals(signum).name
        sys.stderr.write(f"stopped by {name} during start-up, before the run began; the same "
                         f"command starts it again\n")
        sys.stderr.flush()
        os._exit(75)
    return {sig: signal.signal(sig, stop)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}


if __name__ == "__main__":
    console()
