"""Command line: `vmc run`, `vmc check`, `vmc eval`, `vmc analyze`.

Bad input prints one line `error: ...` to stderr and exits with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and one line on errors (its default is also 2)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vmc", description="Neural-network variational Monte Carlo for molecules.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train a wavefunction, evaluate it, write summary.json")
    r.add_argument("config", help="molecule YAML file")
    r.add_argument("--out", help="run directory (default runs/<config stem>)")
    r.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a setting, e.g. optim.lr=0.1")
    r.add_argument("--preset", help="named settings: paper (FermiNet sizes), tiny")
    r.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out")
    r.add_argument("--init-from", metavar="RUN_DIR",
                   help="warm start: parameters (and walkers) from another run")
    _distributed_args(r)
    c = sub.add_parser("check", help="validate a config and print what a run would do")
    c.add_argument("config")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--preset")
    e = sub.add_parser("eval", help="frozen-parameter evaluation of a run's newest checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--steps", type=int)
    e.add_argument("--walkers", type=int)
    e.add_argument("--seed", type=int)
    e.add_argument("--burn-in", type=int)
    e.add_argument("--observables", metavar="LIST",
                   help="comma-separated, beside the energy: s2, dipole, density, forces "
                   "(default: the run's eval.observables)")
    _distributed_args(e)
    sub.add_parser("analyze", help="reblocked energies, tables and plots of runs",
                   add_help=False)
    li = sub.add_parser("launch-info", help="print how this process would join a multi-process "
                        "run (from the flags, VMC_* or SLURM), without starting anything")
    _distributed_args(li)
    return p


def _distributed_args(p):
    g = p.add_argument_group("several processes (default: SLURM's variables under srun, or "
                             "VMC_COORDINATOR, VMC_NUM_PROCESSES, VMC_PROCESS_ID)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0's coordination service")
    g.add_argument("--num-processes", type=int, metavar="N")
    g.add_argument("--process-id", type=int, metavar="I")


def _avoid_cpu_deadlock():
    """jaxlib 0.10.x can deadlock in LAPACK calls (slogdet's LU) on a 2-thread CPU pool;
    XLA's concurrency-optimized scheduler off avoids it. Must run before JAX starts."""
    flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def _setup_jax(args=None, cfg=None):
    """Process-wide JAX settings: float64 available (the network dtype is set per run), and
    the distributed runtime when launched as several processes (vmc.parallel)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # keep PySCF's threads off JAX's cores
    import jax
    jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("VMC_JAX_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    from vmc.parallel import DEFAULT_HEARTBEAT_S, setup_distributed
    heartbeat = cfg.run.heartbeat_seconds if cfg is not None else DEFAULT_HEARTBEAT_S
    setup_distributed(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                      getattr(args, "process_id", None), heartbeat_s=heartbeat)


def _log(message: str) -> None:
    """Console lines come from process 0 only."""
    import jax
    if jax.process_index() == 0:
        print(message, flush=True)


def main(argv=None) -> int:
    """Entry point of the `vmc` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _avoid_cpu_deadlock()
    if argv and argv[0] == "analyze":
        from vmc.analyze import main as analyze_main
        return analyze_main(argv[1:])
    args = _parser().parse_args(argv)
    from vmc.errors import InputError
    from vmc.parallel import DistributedError
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "run":
            return _run(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "launch-info":
            import json
            from vmc.parallel import launch_plan
            print(json.dumps(launch_plan(args.coordinator, args.num_processes,
                                         args.process_id)))
            return 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DistributedError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    except Exception as err:  # noqa: BLE001
        _lost_peer(err)
        raise
    return 2


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


def _load(args):
    from vmc.config import load_config
    return load_config(args.config, preset=args.preset, overrides=tuple(args.overrides))


def _run(args) -> int:
    cfg = _load(args)
    out = pathlib.Path(args.out) if args.out else pathlib.Path("runs") / pathlib.Path(args.config).stem
    _setup_jax(args, cfg)
    from vmc.run import train_run
    return train_run(cfg, out, resume=args.resume,
                     init_from=pathlib.Path(args.init_from) if args.init_from else None,
                     log=_log)


def _eval(args) -> int:
    _setup_jax(args)
    run_dir = pathlib.Path(args.run_dir)
    if (run_dir / "config.yaml").is_file():   # else eval_run says it is no run directory
        from vmc.config import load_config
        from vmc.precheck import check_devices
        cfg = load_config(run_dir / "config.yaml")
        check_devices({"--walkers": args.walkers} if args.walkers
                      else {"eval.walkers": cfg.eval.walkers})
    from vmc.run import eval_run
    return eval_run(pathlib.Path(args.run_dir), steps=args.steps, walkers=args.walkers,
                    seed=args.seed, burn_in=args.burn_in, log=_log,
                    observables=args.observables)


def _check(args) -> int:
    cfg = _load(args)
    _setup_jax()
    from vmc.check import describe
    from vmc.precheck import check_run_input
    lines = []
    checked = check_run_input(cfg, resume=False, log=lines.append)
    print(describe(cfg, hf=checked.hf, notes=lines + ([checked.note] if checked.note else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
