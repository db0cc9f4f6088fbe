"""Where one training step's time goes: its parts timed one by one, side by side.

For each (network, solver) the parts of `vmc.train.make_train_step` are jit-compiled on their
own and timed at the same state (after `--burn-in` sampler steps from the initial state):

* ``moves``: `sampler.moves` all-electron Metropolis moves (the sampler step less its log|ψ|
  refresh, i.e. sampler step − refresh);
* ``refresh``: log|ψ| of every walker with the current parameters (the sampler's first pass);
* ``local energy``: E_L of every walker (forward Laplacian by default);
* ``gradients``: per-walker ∂ log|ψ|/∂θ (jacrev under vmap; what `sample`, `dense` and
  `spring` form; `cg`/`kfac` form products instead, so this is a reference cost);
* ``update``: the optimizer's whole `update` (its own gradients or products, and the solve);
* ``step``: the whole jitted step; ``host``: the loop's work between steps (run_loop for
  `--loop-steps` steps with a real train.h5 writer, per step, minus ``step``).

Fractions are of ``step`` (the parts overlap inside the fused step, so they need not add up
to 1). Pretraining: ms per step of one block of steps (`vmc.pretrain.make_pretrain_block`),
next to its floor, the loss's forward and backward pass alone.
Every timing is the median of `--repeats` calls after compilation and one warm call; compile
times are the first call's. Memory: with `--memory`, the peak RSS of a child process that
builds the state and runs 4 steps (the last 2 timed), for each `--memory-walkers` batch (on a GPU: the device's
peak bytes in use).

    python scripts/profile_step.py                       # default + benchmark network, Li
    python scripts/profile_step.py --system N --solvers kfac --networks benchmark
    python scripts/profile_step.py --memory --system N2 --networks benchmark \
        --memory-walkers 256 1024 4096 --solvers kfac

The benchmark network is FermiNet's Li benchmark: (128,16)×3 layers, 8 determinants, 256
walkers, 10 moves per step (issue #13).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from vmc.config import load_config  # noqa: E402
from vmc.sampler import make_sampler  # noqa: E402
from vmc.train import build, init_state, make_burn_in_step, make_train_step  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
NETWORKS = {
    "default": (),
    "benchmark": ("ansatz.hidden_one=[128,128,128]", "ansatz.hidden_two=[16,16,16]",
                  "ansatz.determinants=8", "sampler.walkers=256", "sampler.moves=10"),
}
SOLVERS = ("sample", "cg", "kfac", "kfac-cg", "spring", "adam")


def _block(x):
    return jax.block_until_ready(x)


def timed(fn, *args, repeats: int):
    """(compile+first call s, median s of `repeats` calls after one warm call)."""
    tic = time.perf_counter()
    _block(fn(*args))
    first = time.perf_counter() - tic
    _block(fn(*args))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - tic)
    return first, statistics.median(times)


def make_cfg(system: str, network: str, solver: str, extra=(), walkers=None):
    overrides = [*NETWORKS[network], f"optim.solver={solver}", "run.progress=false", *extra]
    if walkers:
        overrides.append(f"sampler.walkers={walkers}")
    return load_config(ROOT / "systems" / f"{system}.yaml", overrides=tuple(overrides))


def prepared_state(setup, burn_in: int):
    state = init_state(setup, jax.random.PRNGKey(0))
    burn = make_burn_in_step(setup)
    mcmc = state.mcmc
    for i in range(burn_in):
        mcmc, _ = burn(state.params, mcmc, jax.random.PRNGKey(100 + i))
    return state._replace(mcmc=mcmc)


def host_per_step(setup, state, steps: int) -> float:
    """Seconds per step of vmc.loop.run_loop (real StatsWriter into a temporary train.h5)."""
    from vmc.h5io import StatsWriter
    from vmc.loop import run_loop
    cfg = setup.cfg
    step_fn = make_train_step(setup)
    with tempfile.TemporaryDirectory() as d:
        run_dir = pathlib.Path(d)
        writer = StatsWriter(run_dir / "train.h5", flush_every=20)
        kw = dict(train_key=jax.random.PRNGKey(1), cfg=cfg, run_dir=run_dir, writer=writer,
                  log=lambda m: None)
        state, *_ = run_loop(step_fn, state, start=0, steps=2, **kw)     # compile + warm
        _block(state)
        tic = time.perf_counter()
        state, *_ = run_loop(step_fn, state, start=2, steps=2 + steps, **kw)
        _block(state)
        elapsed = time.perf_counter() - tic
        writer.close()
    return elapsed / steps


def profile(system: str, network: str, solver: str, repeats: int, burn_in: int,
            loop_steps: int) -> dict:
    cfg = make_cfg(system, network, solver, ("run.checkpoint_every=1000000",))
    setup = build(cfg)
    state = prepared_state(setup, burn_in)
    s = cfg.sampler
    log_psi = setup.ansatz.log_psi
    _, sampler_step = make_sampler(log_psi, s.moves, s.target_pmove, s.adapt_rate)
    batched_logabs = jax.vmap(lambda p, x: log_psi(p, x)[1], in_axes=(None, 0))
    key = jax.random.PRNGKey(7)
    walkers = state.mcmc.walkers
    e_l_fn = jax.jit(setup.batched_local_energy)
    e_l = e_l_fn(state.params, walkers)
    mask = jnp.ones(e_l.shape, bool)
    parts = {}
    parts["sampler step"] = timed(jax.jit(sampler_step), state.params, state.mcmc, key,
                                  repeats=repeats)
    parts["refresh"] = timed(jax.jit(batched_logabs), state.params, walkers, repeats=repeats)
    parts["local energy"] = timed(e_l_fn, state.params, walkers, repeats=repeats)
    if solver in ("sample", "dense", "spring"):
        grads = jax.jit(jax.vmap(jax.grad(lambda p, x: log_psi(p, x)[1]), in_axes=(None, 0)))
        parts["gradients"] = timed(grads, state.params, walkers, repeats=repeats)
    update = jax.jit(lambda p, o, w, e, t: setup.optimizer.update(p, o, w, e, t, mask=mask))
    parts["update"] = timed(update, state.params, state.opt_state, walkers, e_l,
                            jnp.asarray(5), repeats=repeats)
    step_fn = make_train_step(setup)
    parts["step"] = timed(step_fn, state, key, jnp.asarray(5), jnp.asarray(0, jnp.int32),
                          repeats=repeats)
    out = {k: {"compile_s": v[0], "s": v[1]} for k, v in parts.items()}
    moves = out.pop("sampler step")
    out = {"moves": {"compile_s": moves["compile_s"],
                     "s": max(moves["s"] - out["refresh"]["s"], 0.0)}, **out}
    loop = host_per_step(setup, state, loop_steps)
    out["host"] = {"compile_s": 0.0, "s": max(loop - out["step"]["s"], 0.0)}
    out["loop"] = {"compile_s": 0.0, "s": loop}
    from vmc.ansatz import count_params
    return {"system": system, "network": network, "solver": solver,
            "params": count_params(state.params), "walkers": s.walkers, "parts": out}


def pretrain_ms(system: str, network: str, repeats: int) -> dict:
    """ms per pretraining step as `vmc run` makes them (one compiled block of
    `vmc.pretrain.SYNC_EVERY` steps, even and odd alike, per call), for the default
    `pretrain.sampling` ('alternate': network and HF moves by turns) and for 'hf' (HF moves
    only: FermiNet's default work per step, its `scf_fraction` 1), the two timed interleaved
    (medians over rounds of one call each); and the floor under both: the loss's forward and
    backward pass alone (its gradient at the walkers: no moves, no Adam)."""
    from vmc.hf import run_hf
    from vmc.pretrain import SYNC_EVERY, PretrainState, make_pretrain_block, pretrain_loss
    cfg = make_cfg(system, network, "kfac")
    setup = build(cfg)
    hf = run_hf(setup.molecule, cfg.pretrain.basis, cfg.pretrain.method)
    state = init_state(setup, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(3)
    n = SYNC_EVERY
    blocks, first = {}, {}
    for sampling in ("alternate", "hf"):
        pre = dataclasses.replace(cfg.pretrain, sampling=sampling)
        tx, block = make_pretrain_block(
            dataclasses.replace(setup, cfg=dataclasses.replace(cfg, pretrain=pre)), hf, pre.lr)
        ps = PretrainState(state.params, tx.init(state.params), state.mcmc)
        first[sampling], _ = timed(block, ps, key, 0, n, repeats=1)
        blocks[sampling] = (block, ps)
    times = {k: [] for k in blocks}
    for _ in range(max(5, repeats // 2)):
        for k, (block, ps) in blocks.items():
            tic = time.perf_counter()
            _block(block(ps, key, 0, n))
            times[k].append(time.perf_counter() - tic)
    grad = jax.jit(jax.grad(lambda p, w: pretrain_loss(setup.ansatz.orbitals, hf,
                                                       setup.molecule.n_up, p, w)))
    _, floor = timed(grad, state.params, state.mcmc.walkers, repeats=repeats)
    return {"system": system, "network": network, "compile_s": first["alternate"],
            "ms_per_step": 1e3 * statistics.median(times["alternate"]) / n,
            "ms_per_step_hf": 1e3 * statistics.median(times["hf"]) / n,
            "steps_per_block": n, "ms_loss_grad": 1e3 * floor, "moves": cfg.pretrain.moves}


def table(rows: list) -> str:
    names = ["moves", "refresh", "local energy", "gradients", "update", "host", "step"]
    head = ("| system | network | params | solver | " + " | ".join(
        f"{n} ms (share)" for n in names) + " | step compile s |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        p = r["parts"]
        step = p["step"]["s"]
        cells = []
        for n in names:
            if n not in p:
                cells.append("–")
            elif n == "step":
                cells.append(f"{1e3 * step:.1f}")
            else:
                cells.append(f"{1e3 * p[n]['s']:.1f} ({p[n]['s'] / step:.0%})")
        lines.append(f"| {r['system']} | {r['network']} | {r['params']} | {r['solver']} | "
                     + " | ".join(cells) + f" | {p['step']['compile_s']:.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ memory
def _memory_child(system, network, solver, walkers, chunk):
    extra = ["run.checkpoint_every=1000000"]
    if chunk is not None:   # E_L and, for sample/spring, the per-walker gradients
        extra += [f"hamiltonian.chunk_walkers={chunk}", f"optim.jacobian_chunk={chunk}"]
    cfg = make_cfg(system, network, solver, extra, walkers)
    setup = build(cfg)
    state = init_state(setup, jax.random.PRNGKey(0))
    step_fn = make_train_step(setup)
    tic = time.perf_counter()
    for t in range(4):   # calls 1 and 2 compile (the second for the output's layout)
        state, stats = step_fn(state, jax.random.PRNGKey(t), jnp.asarray(t),
                               jnp.asarray(0, jnp.int32))
        _block(state)
        if t == 1:
            tic = time.perf_counter()
    step_s = (time.perf_counter() - tic) / 2
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats_fn = getattr(jax.devices()[0], "memory_stats", None)
    device_stats = stats_fn() if stats_fn is not None and jax.default_backend() != "cpu" else None
    if device_stats and "peak_bytes_in_use" in device_stats:   # an accelerator: its own peak
        peak_mb = device_stats["peak_bytes_in_use"] / 2 ** 20
    print(json.dumps({"peak_mb": peak_mb, "step_s": step_s,
                      "energy": float(stats.energy)}))


def memory(system, network, solver, walkers_list, chunk) -> list:
    rows = []
    for w in walkers_list:
        cmd = [sys.executable, __file__, "--_memory-child", system, network, solver, str(w),
               "" if chunk is None else str(chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"walkers": w, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        rows.append({"walkers": w, **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(f"  memory {system} {network} {solver} walkers {w}: {rows[-1]}", file=sys.stderr,
              flush=True)
    return rows


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_memory-child":
        system, network, solver, w, chunk = sys.argv[2:7]
        _memory_child(system, network, solver, int(w), int(chunk) if chunk else None)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="Li")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--burn-in", type=int, default=20)
    p.add_argument("--loop-steps", type=int, default=20)
    p.add_argument("--no-pretrain", action="store_true")
    p.add_argument("--pretrain-only", action="store_true", help="the pretraining table only")
    p.add_argument("--memory", action="store_true", help="peak RSS per batch size only")
    p.add_argument("--memory-walkers", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--chunk", type=int, default=None,
                   help="hamiltonian.chunk_walkers and optim.jacobian_chunk for the memory runs")
    p.add_argument("--json", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    result = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    if args.memory:
        result["memory"] = []
        for net in args.networks:
            for solver in args.solvers:
                rows = memory(args.system, net, solver, args.memory_walkers, args.chunk)
                result["memory"].append({"system": args.system, "network": net,
                                         "solver": solver, "chunk": args.chunk, "rows": rows})
        print(f"| system | network | solver | walkers | chunk | peak memory (GB) | step (s) |")
        print("|---|---|---|---|---|---|---|")
        for m in result["memory"]:
            for r in m["rows"]:
                if "error" in r:
                    print(f"| {m['system']} | {m['network']} | {m['solver']} | {r['walkers']} "
                          f"| {m['chunk'] or 'all'} | failed: {r['error']} | |")
                else:
                    print(f"| {m['system']} | {m['network']} | {m['solver']} | {r['walkers']} "
                          f"| {m['chunk'] or 'all'} | {r['peak_mb'] / 1024:.2f} "
                          f"| {r['step_s']:.2f} |", flush=True)
    else:
        rows = []
        for net in args.networks if not args.pretrain_only else ():
            for solver in args.solvers:
                print(f"profiling {args.system} {net} {solver}", file=sys.stderr, flush=True)
                rows.append(profile(args.system, net, solver, args.repeats, args.burn_in,
                                    args.loop_steps))
        result["profile"] = rows
        if rows:
            print(table(rows))
        if not args.no_pretrain:
            pre = [pretrain_ms(args.system, net, args.repeats) for net in args.networks]
            result["pretrain"] = pre
            print("\n| system | network | pretraining ms/step (block of "
                  f"{pre[0]['steps_per_block']}), default: network and HF moves by turns | "
                  "ms/step, pretrain.sampling=hf (FermiNet's work per step) | the loss's "
                  "forward and backward pass alone, ms | moves/step | compile s |")
            print("|---|---|---|---|---|---|---|")
            for r in pre:
                print(f"| {r['system']} | {r['network']} | {r['ms_per_step']:.2f} "
                      f"| {r['ms_per_step_hf']:.2f} | {r['ms_loss_grad']:.2f} | {r['moves']} "
                      f"| {r['compile_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
