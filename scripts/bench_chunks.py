"""Local energy and training step with the walkers in chunks against all at once (CPU).

`hamiltonian.chunk_walkers: null` picks `vmc.hamiltonian.resolve_chunk`'s chunk: on a CPU a
FermiNet's local energy in chunks of 32 walkers from 5 electrons on. This script measures
why: per system, the batched local energy (`Setup.batched_local_energy`, jitted) with each
chunk size, and the whole jitted training step with the rule's chunk against all walkers at
once, side by side in one process (interleaved rounds, best and median), with the ratios.

    python scripts/bench_chunks.py                                  # N O Ne, FermiNet default
    python scripts/bench_chunks.py --systems Li N --network benchmark --solver kfac
    python scripts/bench_chunks.py --systems N --ansatz psiformer --chunks 256 64 32

Prints a Markdown table: system, ansatz, network, solver, walkers, then per chunk the local
energy's best ms and its ratio to all at once, and the step's best ms with the rule's chunk
and all at once and their ratio.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from profile_step import make_cfg, prepared_state  # noqa: E402

from vmc.train import build, make_train_step  # noqa: E402


def _best_and_median(fns: dict, rounds: int) -> dict:
    """{name: (best s, median s)} of zero-argument callables, timed in interleaved rounds
    after two warm calls each."""
    for fn in fns.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            tic = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - tic)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def bench(system: str, ansatz: str, network: str, solver: str, walkers: int, chunks: list,
          rounds: int, step: bool) -> dict:
    extra = (f"ansatz.name={ansatz}", f"sampler.walkers={walkers}")
    rule = build(make_cfg(system, network, solver, extra))
    state = prepared_state(rule, 2)
    params, x = state.params, state.mcmc.walkers
    setups = {"all": build(make_cfg(system, network, solver,
                                    extra + (f"hamiltonian.chunk_walkers={walkers}",)))}
    for c in chunks:
        setups[str(c)] = build(make_cfg(system, network, solver,
                                        extra + (f"hamiltonian.chunk_walkers={c}",)))
    fns = {}
    for name, s in setups.items():
        e_l = jax.jit(s.batched_local_energy)
        fns[name] = (lambda e_l=e_l: e_l(params, x))
    e_l_times = _best_and_median(fns, rounds)
    out = {"system": system, "ansatz": ansatz, "network": network, "solver": solver,
           "walkers": walkers, "rule_chunk": rule.chunk_walkers,
           "e_l": {k: v[0] for k, v in e_l_times.items()}}
    if step:
        key, t, n_bad = jax.random.PRNGKey(7), jnp.asarray(5), jnp.asarray(0, jnp.int32)
        steps = {}
        for name, s in (("rule", rule), ("all", setups["all"])):
            fn = make_train_step(s)
            st = state._replace(opt_state=s.optimizer.init(params))
            steps[name] = (lambda fn=fn, st=st: fn(st, key, t, n_bad))
        out["step"] = {k: v for k, v in _best_and_median(steps, rounds).items()}
    return out


def table(rows: list) -> str:
    chunks = [k for k in rows[0]["e_l"] if k != "all"]
    head = ["system", "ansatz", "network", "solver", "walkers", "E_L all ms",
            *[f"E_L {c} ms (ratio)" for c in chunks], "rule chunk",
            "step rule ms", "step all ms", "step rule/all (best; median)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e = r["e_l"]
        cells = [r["system"], r["ansatz"], r["network"], r["solver"], str(r["walkers"]),
                 f"{1e3 * e['all']:.1f}",
                 *[f"{1e3 * e[c]:.1f} ({e[c] / e['all']:.2f})" for c in chunks],
                 str(r["rule_chunk"] or "all")]
        if "step" in r:
            (rb, rm), (ab, am) = r["step"]["rule"], r["step"]["all"]
            cells += [f"{1e3 * rb:.1f}", f"{1e3 * ab:.1f}", f"{rb / ab:.2f}; {rm / am:.2f}"]
        else:
            cells += ["–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=["N", "O", "Ne"])
    p.add_argument("--ansatz", default="ferminet", choices=("ferminet", "psiformer"))
    p.add_argument("--network", default="default", choices=("default", "benchmark"))
    p.add_argument("--solver", default="sample")
    p.add_argument("--walkers", type=int, default=256)
    p.add_argument("--chunks", nargs="+", type=int, default=[128, 64, 32, 16])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-step", action="store_true", help="the local energy only")
    args = p.parse_args(argv)
    rows = []
    for system in args.systems:
        row = bench(system, args.ansatz, args.network, args.solver, args.walkers,
                    args.chunks, args.rounds, not args.no_step)
        print(f"{system}: done", file=sys.stderr, flush=True)
        rows.append(row)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
