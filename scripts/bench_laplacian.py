"""The local energy's Laplacian methods side by side: time, compile time, memory, accuracy.

For each system, ansatz and size, every method of `vmc.hamiltonian.LAPLACIANS` ('hessian':
jvp-of-grad loop; 'forward': folx dense; 'forward-sparse': folx with sparse Jacobians) gives
the float32 local energy of the same `--walkers` walkers (`vmc.sampler.init_walkers` around
the nuclei) at the same freshly initialised parameters:

* ``ms_per_batch``: one jitted call on the whole batch, best of `--repeats`, the methods
  interleaved round by round (same machine load for all);
* ``compile_s``: the first call (tracing, lowering, XLA compile) in a fresh child process;
* ``peak_mb``: that child's peak RSS (CPU), which builds, compiles and runs the method twice
  (``base_mb``: its RSS before the compile, imports and network included);
* ``max_abs_dev_ha``: max over walkers of |E_L − E_L^ref|, hartree, where the reference is
  the same network in float64 (parameters cast) with the Hessian method;
* ``default``: whether the method is the one `hamiltonian.laplacian: auto` picks for the case
  (`vmc.hamiltonian.resolve_laplacian`).

The children share a temporary JAX compilation cache with the parent, so the parent's own
compile of the same program is a cache hit. `--no-memory` skips the children (compile_s is
then the parent's, peak_mb null). The full table of README "Performance and memory" was

    python scripts/bench_laplacian.py --json > laplacian.jsonl      # about 20 min on 2 CPU cores

then `python scripts/bench_laplacian.py --table laplacian.jsonl` (markdown, the default
re-derived from the current setting, and per case whether the default is the fastest method
that keeps float32 accuracy, or within 5 % of it). A quick look:
`python scripts/bench_laplacian.py --systems He Li --sizes default`.

Sizes: 'default' is the configuration's default network; 'benchmark' is FermiNet's
benchmark network ((128,16)×3 layers, 8 determinants; issue #13) and for the Psiformer
4 heads × 32, 3 layers, 8 determinants.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSTEMS = ("He", "Li", "N", "O", "Ne", "H2O")
ANSATZE = ("ferminet", "psiformer")
SIZES = {
    ("ferminet", "default"): (),
    ("ferminet", "benchmark"): ("ansatz.hidden_one=[128,128,128]",
                                "ansatz.hidden_two=[16,16,16]", "ansatz.determinants=8"),
    ("psiformer", "default"): (),
    ("psiformer", "benchmark"): ("ansatz.heads=4", "ansatz.head_dim=32", "ansatz.layers=3",
                                 "ansatz.determinants=8"),
}
KEYS = ("system", "ansatz", "size", "method", "n_electrons", "walkers", "ms_per_batch",
        "compile_s", "peak_mb", "base_mb", "max_abs_dev_ha", "default", "load_avg")


# the JAX settings `_setup_jax` changes, which `main` restores when it returns
_JAX_SETTINGS = ("jax_enable_x64", "jax_compilation_cache_dir",
                 "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes")


def _reopen_cache() -> None:
    """Make JAX's compilation cache follow `jax_compilation_cache_dir` again: once opened,
    it keeps its folder whatever the setting says later."""
    from jax.experimental.compilation_cache import compilation_cache
    compilation_cache.reset_cache()


def _setup_jax(cache: str | None):
    from vmc.cpu_env import configure_process
    configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread
    import jax
    jax.config.update("jax_enable_x64", True)
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        _reopen_cache()
    return jax


def case_config(system: str, ansatz: str, size: str):
    """The resolved configuration of one case, as `vmc run` would load it."""
    from vmc.config import load_config
    overrides = (f"ansatz.name={ansatz}", *SIZES[(ansatz, size)])
    return load_config(ROOT / "systems" / f"{system}.yaml", overrides=overrides)


def default_method(system: str, ansatz: str, size: str) -> str:
    """The method `hamiltonian.laplacian: auto` resolves to for the case (by
    `vmc.hamiltonian.resolve_laplacian`, through the configuration as a run does)."""
    return case_config(system, ansatz, size).hamiltonian.laplacian


def make_case(system: str, ansatz: str, size: str, method: str, walkers: int, dtype):
    """(batched E_L (params, walkers) -> (n_w,) hartree, params, walkers (n_w, n, 3) bohr,
    molecule) for one case; parameters from PRNGKey(0), walkers from PRNGKey(1), both
    float32 then cast to `dtype`, so float32 and float64 cases see the same values."""
    import jax
    import jax.numpy as jnp
    from vmc.ansatz import make_ansatz
    from vmc.hamiltonian import make_local_energy, over_walkers
    from vmc.sampler import init_walkers
    cfg = case_config(system, ansatz, size)
    mol = cfg.build_molecule()
    params = make_ansatz(cfg.ansatz, mol, jnp.float32).init(jax.random.PRNGKey(0))
    x = init_walkers(jax.random.PRNGKey(1), mol, walkers, cfg.sampler.init_width)
    cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa
    params = jax.tree_util.tree_map(cast, params)
    net = make_ansatz(cfg.ansatz, mol, dtype)
    e_l = jax.jit(over_walkers(make_local_energy(net.log_psi, mol, method, dtype)))
    return e_l, params, x.astype(dtype), mol


def _rss_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, MB. Not ru_maxrss: Linux carries that
    over exec from the forking parent, so a child would report at least the parent's RSS."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _child(args) -> None:
    """One method in a fresh process: prints {compile_s, peak_mb, base_mb} as JSON."""
    jax = _setup_jax(args.cache)
    import jax.numpy as jnp
    e_l, params, x, _ = make_case(args.child[0], args.child[1], args.child[2], args.child[3],
                                  args.walkers, jnp.float32)
    base = _rss_mb("VmRSS")
    tic = time.perf_counter()
    jax.block_until_ready(e_l(params, x))
    compile_s = time.perf_counter() - tic
    jax.block_until_ready(e_l(params, x))
    peak = _rss_mb("VmHWM")
    print(json.dumps({"compile_s": compile_s, "peak_mb": peak, "base_mb": base}))


def run_child(case, method: str, walkers: int, cache: str) -> dict:
    """compile_s, peak_mb, base_mb of one method, from a child process (see `_child`)."""
    cmd = [sys.executable, __file__, "--child", *case, method, "--walkers", str(walkers),
           "--cache", cache]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_case(case, methods, walkers: int, repeats: int, cache: str, memory: bool) -> list:
    """One row per method for case = (system, ansatz, size); see the module docstring."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    system, ansatz, size = case
    child = {m: run_child(case, m, walkers, cache) if memory else {} for m in methods}
    ref_fn, p64, x64, mol = make_case(system, ansatz, size, "hessian", walkers, jnp.float64)
    ref = np.asarray(ref_fn(p64, x64))
    fns, first, outs = {}, {}, {}
    for m in methods:
        fns[m], params, x, _ = make_case(system, ansatz, size, m, walkers, jnp.float32)
        tic = time.perf_counter()
        outs[m] = np.asarray(jax.block_until_ready(fns[m](params, x)))
        first[m] = time.perf_counter() - tic
    best = {m: float("inf") for m in methods}
    for _ in range(repeats):                       # interleaved: one call per method a round
        for m in methods:
            tic = time.perf_counter()
            jax.block_until_ready(fns[m](params, x))
            best[m] = min(best[m], time.perf_counter() - tic)
    pick = default_method(system, ansatz, size)
    rows = []
    for m in methods:
        rows.append({
            "system": system, "ansatz": ansatz, "size": size, "method": m,
            "n_electrons": mol.n_electrons, "walkers": walkers,
            "ms_per_batch": 1e3 * best[m],
            "compile_s": child[m].get("compile_s", first[m]),
            "peak_mb": child[m].get("peak_mb"), "base_mb": child[m].get("base_mb"),
            "max_abs_dev_ha": float(np.max(np.abs(outs[m] - ref))),
            "default": m == pick, "load_avg": os.getloadavg()[0]})
    return rows


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def accurate(rows, factor: float = 10.0) -> list:
    """The rows of one case that keep float32 accuracy: max_abs_dev_ha at most `factor`
    times the case's smallest, or at most the float32 Hessian loop's own (the methods share
    the float32 network, and one walker near a node of ψ can set a case's maximum)."""
    devs = {r["method"]: r["max_abs_dev_ha"] for r in rows}
    limit = max(factor * min(devs.values()), devs.get("hessian", 0.0))
    return [r for r in rows if r["max_abs_dev_ha"] <= limit]


def check_default(rows) -> tuple:
    """(fastest accurate method, default method, default's time / fastest's) of one case;
    the default is recomputed from the current `hamiltonian.laplacian` default (None when
    it is not among the accurate rows)."""
    r0 = rows[0]
    pick = default_method(r0["system"], r0["ansatz"], r0["size"])
    ok = accurate(rows)
    fastest = min(ok, key=lambda r: r["ms_per_batch"])
    mine = [r for r in ok if r["method"] == pick]
    ratio = mine[0]["ms_per_batch"] / fastest["ms_per_batch"] if mine else None
    return fastest["method"], pick, ratio


def print_table(path, tolerance: float = 0.05) -> None:
    """Saved `--json` rows (file `path`) as a markdown table, one line per case, the methods
    as h (hessian), f (forward), s (forward-sparse); the default re-derived from the current
    setting and checked: the fastest accurate method (`accurate`), or within `tolerance`."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    cases = {}
    for r in rows:
        cases.setdefault((r["system"], r["ansatz"], r["size"]), {})[r["method"]] = r
    short = {"hessian": "h", "forward": "f", "forward-sparse": "s"}
    order = [m for m in short if any(m in c for c in cases.values())]
    cols = "/".join(short[m] for m in order)
    print(f"| system | ansatz | size | n | ms/batch {cols} | compile s {cols} | "
          f"peak MB {cols} | max abs dE (Ha) {cols} | default | check |")
    print("|---" * 10 + "|")
    n_ok = 0
    for case, by in cases.items():
        rs = [by[m] for m in order]
        fastest, pick, ratio = check_default(rs)
        ok = ratio is not None and ratio <= 1 + tolerance
        n_ok += ok
        check = (f"{'ok' if ok else 'NO'}: {ratio:.2f}x {fastest}" if ratio is not None
                 else "NO: not accurate")
        def col(key, spec):
            return " / ".join(_fmt(r[key], spec) for r in rs)
        print(f"| {' | '.join(case)} | {rs[0]['n_electrons']} | {col('ms_per_batch', '.1f')} | "
              f"{col('compile_s', '.0f')} | {col('peak_mb', '.0f')} | "
              f"{col('max_abs_dev_ha', '.0e')} | {short[pick]} | {check} |")
    print(f"default fastest or within {100 * tolerance:.0f} % of it: {n_ok} of {len(cases)} cases")


def main(argv=None) -> None:
    """Command line (see the module docstring); `argv` None: sys.argv."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    p.add_argument("--ansatz", nargs="+", default=list(ANSATZE), choices=ANSATZE)
    p.add_argument("--sizes", nargs="+", default=["default", "benchmark"],
                   choices=("default", "benchmark"))
    p.add_argument("--methods", nargs="+", default=None, help="default: all LAPLACIANS")
    p.add_argument("--walkers", type=int, default=256,
                   help="batch size (default 256: a run's default walkers, on which "
                        "hamiltonian.laplacian: auto was chosen)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true", help="no child processes")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--table", default=None, metavar="JSONL",
                   help="print saved --json rows as a markdown table and check the default")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    if args.table:
        return print_table(args.table)
    from vmc.cpu_env import configure_process
    configure_process()   # before JAX's import, as `_setup_jax`
    import jax
    saved = {k: getattr(jax.config, k) for k in _JAX_SETTINGS}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_laplacian_") as cache:
            _bench(args, cache)
    finally:   # a caller in the same process (the tests) keeps its own cache and dtypes
        for k, v in saved.items():
            jax.config.update(k, v)
        _reopen_cache()


def _bench(args, cache: str) -> None:
    """The benchmark proper (`main` without a --child or --table)."""
    _setup_jax(cache)
    from vmc.hamiltonian import LAPLACIANS
    methods = args.methods or list(LAPLACIANS)
    if not args.json:
        print(f"load average {os.getloadavg()}; {args.walkers} walkers, best of "
              f"{args.repeats}; max|dE| against float64 Hessian", flush=True)
        print(f"{'system':6s} {'ansatz':9s} {'size':9s} {'method':14s} {'ms/batch':>9s} "
              f"{'compile s':>9s} {'peak MB':>8s} {'max|dE| Ha':>10s} default", flush=True)
    for system in args.systems:
        for ansatz in args.ansatz:
            for size in args.sizes:
                for r in bench_case((system, ansatz, size), methods, args.walkers,
                                    args.repeats, cache, not args.no_memory):
                    if args.json:
                        print(json.dumps({k: r[k] for k in KEYS}), flush=True)
                    else:
                        print(f"{system:6s} {ansatz:9s} {size:9s} {r['method']:14s} "
                              f"{r['ms_per_batch']:9.1f} {r['compile_s']:9.1f} "
                              f"{_fmt(r['peak_mb'], '8.0f')} "
                              f"{r['max_abs_dev_ha']:10.2e} "
                              f"{'*' if r['default'] else ''}", flush=True)


if __name__ == "__main__":
    main()
