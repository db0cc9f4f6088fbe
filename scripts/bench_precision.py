"""float32 local energies with the determinant stage in float32 ("before") and float64 ("after").

For each system (default He, Li, LiH, Be, N):

1. Train: `vmc run systems/X.yaml --out OUT/X --set pretrain.steps=P --set optim.steps=T
   --set eval.steps=0` as a subprocess (defaults otherwise: float32 network, det_precision
   float64, 256 walkers, solver sample); an existing finished run directory is reused.
2. Sample part: from the final checkpoint, `--burn-in` Metropolis steps (width adapting),
   then `--sample-steps` recorded steps with the width frozen and the parameters fixed
   (each step `sampler.moves` all-electron moves of every walker), sampled with the default
   float32 wavefunction. At every recorded configuration (float32 numbers) E_L is computed
   with the float32 network and the determinant stage in float32 (`ansatz.det_precision:
   network`, before) and in float64 (after), and against the reference: the same parameters
   cast to float64 with `run.x64: true`. The forward Laplacian runs on all samples, the
   Hessian one on every `--hessian-every`-th recorded step. Step time: one full jitted
   `make_train_step` (default network, 256 walkers, forward Laplacian) for both variants in
   this process, on the trained state, after compilation and one warm call: `--timing-steps`
   pairs run back to back in alternating order; the medians of each, and as "after/before"
   the median of the paired ratios (robust to the load of a shared machine). For the
   samples with |ΔE_L| > 0.1 mHa after, |∇ log|ψ||² is computed too (see "near ψ node").
3. Bisection part: pairs (x_a, x_b = x_a + 0.5 ξ) of sampled configurations across which
   det_k changes sign for some k are bisected (float64, 45 halvings) onto the node, rounded to
   float32 and nudged by ±1 ulp per coordinate (32 random tries, keeping the best) towards the
   float32 grid point of largest condition number κ_k below 1e11 (beyond that float64 itself
   loses digits); configurations with κ_k >= `--min-cond` are kept (κ of the float64 network's
   matrix at the float32 point; as in tests/test_precision.py). There E_L is compared as in 2.
   "carry" is |E_L(without det k) − E_L| in float64, forward Laplacian: how much of the
   kinetic energy the nearly singular determinant holds. "control" repeats the comparison
   at the same configurations moved `--control-shift` bohr (1e-3; the 3n coordinates
   together) in a random direction, where κ_k is ~10⁴ times smaller: an error that remains
   there is the float32 network's own (steep E_L, large |∇ log ψ|²), not the determinant
   stage's. "near ψ node" counts configurations with 2⁻²⁴·|∇ log|ψ||² > 0.1 mHa (float64
   network): there ψ itself, not just det_k, is nearly zero (det_k dominates the sum),
   ∇² log|ψ| ≈ −|∇ log|ψ||² are each large, and the float32 sum of the two in
   `kinetic_from_logabs` (log_sum_det returns the network's dtype) limits E_L to about
   2⁻²⁴·|∇ log|ψ||² whatever the determinant stage does; "max ΔE_L/(ε₃₂g²)" is the largest
   |ΔE_L| after in those units (g² floored at 1 bohr⁻²): O(1–10) means the remaining error
   is that float32 floor. "ordinary" restricts to configurations whose float64 E_L lies in
   the central 99.8 % of the sample part's E_L.

Shares count non-finite float32 values in every column (NaN counts as above every
threshold); "max |ΔE_L|" is over the finite ones.

    python scripts/bench_precision.py --json runs/bench_precision/results.json
    nohup python scripts/bench_precision.py > runs/bench_precision/log.txt 2>&1 &
    python scripts/bench_precision.py --only-timing --timing-steps 30   # step times only

To measure committed code while the checkout changes, run against a snapshot:
`git archive HEAD vmc | tar -x -C runs/bench_precision/src && git rev-parse HEAD >
runs/bench_precision/src/COMMIT`, then `PYTHONPATH=$PWD/runs/bench_precision/src python
scripts/bench_precision.py ...` (the header names the commit; `vmc run` gets the same vmc).
    python scripts/bench_precision.py --systems He --train-steps 20 --pretrain-steps 20 \
        --sample-steps 8 --bisect-configs 64 --out /tmp/bp     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import vmc  # noqa: E402
from vmc import checkpoint as ckpt  # noqa: E402
from vmc.config import load_config  # noqa: E402
from vmc.hamiltonian import kinetic_from_logabs, make_local_energy  # noqa: E402
from vmc.sampler import make_sampler  # noqa: E402
from vmc.stages import restore  # noqa: E402
from vmc.train import build, make_train_step  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSTEMS = ("He", "Li", "LiH", "Be", "N")
THRESHOLDS_HA = (1e-4, 1e-3, 1e-2)
EPS32 = 2.0 ** -24
LAPLACIANS = ("forward", "hessian")
VARIANTS = ("before", "after")          # det_precision network / float64
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.0f} s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ training
def train(system: str, out: pathlib.Path, pretrain_steps: int, train_steps: int,
          seed: int) -> pathlib.Path:
    """Run `vmc run` for one system (or reuse a finished run); returns the run directory."""
    run_dir = out / system
    final = ckpt.checkpoint_path(run_dir / "checkpoints", train_steps)
    if final.exists():
        log(f"{system}: reusing {run_dir} (checkpoint at step {train_steps})")
        return run_dir
    if run_dir.exists():
        raise SystemExit(f"error: {run_dir} holds a run without a checkpoint at step "
                         f"{train_steps}; remove it or pick another --out")
    cmd = [sys.executable, "-m", "vmc.cli", "run", str(ROOT / "systems" / f"{system}.yaml"),
           "--out", str(run_dir), "--set", f"pretrain.steps={pretrain_steps}",
           "--set", f"optim.steps={train_steps}", "--set", "eval.steps=0",
           "--set", f"run.seed={seed}", "--set", "run.progress=false",
           "--set", "run.log_every=100"]
    log(f"{system}: {' '.join(cmd[2:])}")
    tic = time.time()
    with open(out / f"{system}.train.log", "w") as fh:
        # cwd outside the checkout: `python -m` puts the cwd first on sys.path, and the vmc
        # imported must be the one this process imports (PYTHONPATH may name a snapshot)
        pkg_root = str(pathlib.Path(vmc.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [pkg_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=out,
                            env=env).returncode
    if rc != 0:
        raise SystemExit(f"error: vmc run for {system} exited with {rc}; see "
                         f"{out / (system + '.train.log')}")
    log(f"{system}: trained in {time.time() - tic:.0f} s")
    return run_dir


# ------------------------------------------------------------------------------ pieces
class System:
    """The three setups of one trained run and their parameters."""

    def __init__(self, run_dir: pathlib.Path):
        cfg_path = run_dir / "config.yaml"
        self.cfg = load_config(cfg_path)
        self.after = build(load_config(cfg_path, overrides=("ansatz.det_precision=float64",)))
        self.before = build(load_config(cfg_path, overrides=("ansatz.det_precision=network",)))
        self.ref = build(load_config(cfg_path, overrides=("run.x64=true",)))
        state, step, _ = restore(self.after, run_dir, lambda m: None, what="bench")
        self.state, self.step = state, step
        self.p32 = state.params
        self.p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), state.params)
        self.molecule = self.after.molecule
        self._e_l = {}

    def setup(self, variant: str):
        return {"before": self.before, "after": self.after, "ref": self.ref}[variant]

    def local_energy(self, variant: str, laplacian: str):
        """jit(vmap) E_L for a variant ('before', 'after', 'ref') and Laplacian."""
        key = (variant, laplacian)
        if key not in self._e_l:
            s = self.setup(variant)
            fn = make_local_energy(s.ansatz.log_psi, s.molecule, laplacian, s.dtype)
            self._e_l[key] = jax.jit(jax.vmap(fn, in_axes=(None, 0)))
        return self._e_l[key]

    def params(self, variant: str):
        return self.p64 if variant == "ref" else self.p32


def batched(fn, params, x: np.ndarray, dtype, batch: int) -> np.ndarray:
    """fn(params, x[i:i+batch]) over x, the last batch padded (one compiled shape)."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
        out.append(np.asarray(fn(params, jnp.asarray(chunk, dtype)), np.float64)[:n])
    return np.concatenate(out) if out else np.zeros(0)


def compare(sysm: System, x32: np.ndarray, laplacian: str, batch: int,
            values: dict | None = None) -> dict:
    """E_L before, after and reference at the float32 points x32; the statistics of Δ.

    values: if given, filled with the arrays {'ref', 'before', 'after'} (hartree)."""
    tic = time.time()
    ref = batched(sysm.local_energy("ref", laplacian), sysm.p64, x32.astype(np.float64),
                  jnp.float64, batch)
    res = {"samples": int(len(x32)), "ref_nonfinite": int(np.sum(~np.isfinite(ref))),
           "ref_mean_ha": float(np.nanmean(ref)),
           "ref_abs_max_ha": float(np.nanmax(np.abs(ref)))}
    if values is not None:
        values["ref"] = ref
    for v in VARIANTS:
        e = batched(sysm.local_energy(v, laplacian), sysm.p32, x32, jnp.float32, batch)
        if values is not None:
            values[v] = e
        bad = ~np.isfinite(e)
        d = np.abs(e - ref)
        res[v] = {"nonfinite": int(bad.sum()), "nonfinite_share": float(bad.mean()),
                  "max_abs_mha": float(1e3 * np.max(d[~bad])) if np.any(~bad) else None,
                  **{f"share_above_{1e3 * t:g}_mha": float(np.mean(bad | (d > t)))
                     for t in THRESHOLDS_HA},
                  **{f"count_above_{1e3 * t:g}_mha": int(np.sum(bad | (d > t)))
                     for t in THRESHOLDS_HA}}
    res["seconds"] = time.time() - tic
    return res


# ------------------------------------------------------------------------------ sampling
def sample(sysm: System, burn_in: int, steps: int, seed: int) -> np.ndarray:
    """(steps, n_walkers, n, 3) float32 configurations from |ψ|² (after-variant, float32)."""
    s = sysm.cfg.sampler
    log_psi = sysm.after.ansatz.log_psi
    _, adapt = make_sampler(log_psi, s.moves, s.target_pmove, s.adapt_rate)
    _, frozen = make_sampler(log_psi, s.moves, s.target_pmove, 0.0)
    adapt, frozen = jax.jit(adapt), jax.jit(frozen)
    mcmc = sysm.state.mcmc
    key = jax.random.PRNGKey(seed)
    pm = []
    for t in range(burn_in):
        mcmc, pmove = adapt(sysm.p32, mcmc, jax.random.fold_in(key, t))
    out = np.empty((steps,) + tuple(mcmc.walkers.shape), np.float32)
    for t in range(steps):
        mcmc, pmove = frozen(sysm.p32, mcmc, jax.random.fold_in(key, burn_in + t))
        out[t] = np.asarray(mcmc.walkers)
        pm.append(float(pmove))
    log(f"  sampled {steps} x {out.shape[1]} walkers (burn-in {burn_in}), width "
        f"{float(mcmc.width):.3f}, pmove {np.mean(pm):.3f}")
    return out


def step_times(sysm: System, repeats: int) -> dict:
    """Median seconds of one jitted training step, before and after, interleaved."""
    fns = {v: make_train_step(sysm.setup(v)) for v in VARIANTS}
    state = sysm.state
    key = jax.random.PRNGKey(1234)
    compile_s = {}
    for v in VARIANTS:   # compile, then one warm call
        tic = time.time()
        jax.block_until_ready(fns[v](state, key, sysm.step))
        compile_s[v] = time.time() - tic
        jax.block_until_ready(fns[v](state, key, sysm.step))
    times = {v: [] for v in VARIANTS}
    for i in range(repeats):   # back to back, order alternating: a pair sees the same load
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            k = jax.random.fold_in(key, i)
            tic = time.perf_counter()
            jax.block_until_ready(fns[v](state, k, sysm.step + i))
            times[v].append(time.perf_counter() - tic)
    med = {v: float(np.median(times[v])) for v in VARIANTS}
    pairs = np.asarray(times["after"]) / np.asarray(times["before"])
    return {"median_s": med, "ratio": float(np.median(pairs)),
            "ratio_of_medians": med["after"] / med["before"],
            "pair_ratio_quartiles": [float(q) for q in np.quantile(pairs, [0.25, 0.75])],
            "all_s": times, "compile_s": compile_s}


# ------------------------------------------------------------------------------ bisection
def _det_cond(sysm: System):
    """jit(vmap) x (n, 3) float64 -> (det_k (K,), cond_k (K,)) of the float64 network."""
    def one(x):
        mats = sysm.ref.ansatz.orbitals(sysm.p64, x)
        det = jnp.prod(jnp.stack([jnp.linalg.det(m) for m in mats]), axis=0)
        cond = jnp.max(jnp.stack([jnp.linalg.cond(m) for m in mats]), axis=0)
        return det, cond
    return jax.jit(jax.vmap(one))


def _batched_det_cond(fn, x: np.ndarray, batch: int):
    dets, conds = [], []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
        d, c = fn(jnp.asarray(chunk, jnp.float64))
        dets.append(np.asarray(d)[:n])
        conds.append(np.asarray(c)[:n])
    return np.concatenate(dets), np.concatenate(conds)


def _nudge(x: np.ndarray, rng) -> np.ndarray:
    """Move every coordinate of x (float32) by -1, 0 or +1 ulp at random."""
    step = rng.integers(-1, 2, size=x.shape)
    up, down = np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))
    return np.where(step > 0, up, np.where(step < 0, down, x))


def near_node(sysm: System, pool: np.ndarray, wanted: int, min_cond: float, seed: int,
              batch: int, max_rounds: int = 6):
    """float32 points with κ_k >= min_cond for one determinant k: (x, k, κ, tried pairs)."""
    fn = _det_cond(sysm)
    rng = np.random.default_rng(seed)
    xs, ks, conds, tried = [], [], [], 0
    for _ in range(max_rounds):
        if sum(len(k) for k in ks) >= wanted:
            break
        n_pairs = 4 * wanted
        xa = pool[rng.integers(0, len(pool), n_pairs)].astype(np.float64)
        xb = xa + 0.5 * rng.normal(size=xa.shape)
        tried += n_pairs
        da = _batched_det_cond(fn, xa, batch)[0]
        db = _batched_det_cond(fn, xb, batch)[0]
        change = np.sign(da) != np.sign(db)
        has = change.any(1)
        xa, xb, da, change = xa[has], xb[has], da[has], change[has]
        k = np.array([rng.choice(np.flatnonzero(c)) for c in change], int)
        rows = np.arange(len(k))
        sa = np.sign(da[rows, k])
        lo, hi = np.zeros(len(k)), np.ones(len(k))
        for _ in range(45):
            mid = 0.5 * (lo + hi)
            d = _batched_det_cond(fn, xa + mid[:, None, None] * (xb - xa), batch)[0]
            same = np.sign(d[rows, k]) == sa
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        x = (xa + 0.5 * (lo + hi)[:, None, None] * (xb - xa)).astype(np.float32)

        def cond_k(y):
            return _batched_det_cond(fn, y.astype(np.float64), batch)[1][rows, k]
        best, cond = x, cond_k(x)
        for _ in range(32):
            cand = _nudge(x, rng)
            c = cond_k(cand)
            better = (c > cond) & (c < 1e11)
            best = np.where(better[:, None, None], cand, best)
            cond = np.where(better, c, cond)
        keep = np.flatnonzero(cond >= min_cond)
        xs.append(best[keep])
        ks.append(k[keep])
        conds.append(cond[keep])
        log(f"  bisection round: {n_pairs} pairs, {len(k)} with a sign change, "
            f"{len(keep)} at cond >= {min_cond:g}")
    x, k, cond = np.concatenate(xs), np.concatenate(ks), np.concatenate(conds)
    return x[:wanted], k[:wanted], cond[:wanted], tried


def carry(sysm: System, x32: np.ndarray, k: np.ndarray, batch: int) -> np.ndarray:
    """|E_L without determinant k − E_L|, float64 network, forward Laplacian, hartree."""
    s = sysm.ref
    n_det = sysm.cfg.ansatz.determinants
    if s.cfg.ansatz.jastrow:
        raise NotImplementedError("carry: an ansatz with a Jastrow factor")

    def without(y, drop):
        def logabs(z):
            mats = s.ansatz.orbitals(sysm.p64, z)
            sl = [jnp.linalg.slogdet(m) for m in mats]
            sign = jnp.prod(jnp.stack([a for a, _ in sl]), axis=0)
            lg = jnp.sum(jnp.stack([b for _, b in sl]), axis=0)
            top = jax.lax.stop_gradient(jnp.max(lg))
            w = jnp.where(jnp.arange(n_det) == drop, 0.0, 1.0)
            return jnp.log(jnp.abs(jnp.sum(w * sign * jnp.exp(lg - top)))) + top
        full = kinetic_from_logabs(lambda z: s.ansatz.log_psi(sysm.p64, z)[1], y, "forward")
        return kinetic_from_logabs(logabs, y, "forward") - full
    fn = jax.jit(jax.vmap(without))
    out = []
    for i in range(0, len(x32), batch):
        xc, kc = x32[i:i + batch], k[i:i + batch]
        n = len(xc)
        if n < batch:
            xc = np.concatenate([xc, np.repeat(xc[:1], batch - n, axis=0)])
            kc = np.concatenate([kc, np.repeat(kc[:1], batch - n)])
        out.append(np.abs(np.asarray(fn(jnp.asarray(xc, jnp.float64), jnp.asarray(kc))))[:n])
    return np.concatenate(out)


def grad2(sysm: System, x32: np.ndarray, batch: int) -> np.ndarray:
    """|∇ log|ψ||² (bohr⁻²) of the float64 network at the float32 points x32.

    Where ε₃₂·|∇ log|ψ||² (ε₃₂ = 2⁻²⁴) exceeds 0.1 mHa the configuration is near a node of ψ
    itself: ∇² log|ψ| ≈ −|∇ log|ψ||², and their float32 sum −½(∇² log|ψ| + |∇ log|ψ||²)
    (log_sum_det returns float32; kinetic_from_logabs adds in float32) cannot be better."""
    def one(y):
        g = jax.grad(lambda z: sysm.ref.ansatz.log_psi(sysm.p64, z)[1])(y)
        return jnp.sum(g * g)
    fn = jax.jit(jax.vmap(one))
    return batched(lambda _, y: fn(y), None, x32.astype(np.float64), jnp.float64, batch)


# ------------------------------------------------------------------------------ tables
def _pct(share: float) -> str:
    if share == 0:
        return "0"
    return f"{100 * share:.3g}%"


def _mha(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2g}" if v < 0.01 else f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _ba(r: dict, fn) -> str:
    return f"{fn(r['before'])} → {fn(r['after'])}"


def sample_table(results: dict) -> str:
    head = ("| system | Laplacian | samples | > 0.1 mHa | > 1 mHa | > 10 mHa | non-finite | "
            "max abs ΔE_L (mHa) | after > 0.1 mHa: near ψ node, max ΔE_L/(ε₃₂g²) | "
            "step before (s) | step after (s) | after/before |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name, r in results.items():
        t = r["step_time"]
        if "sample" not in r:   # --only-timing
            lines.append("| " + " | ".join([name, "", *[""] * 7, f"{t['median_s']['before']:.3f}",
                                            f"{t['median_s']['after']:.3f}",
                                            f"{t['ratio']:.2f}"]) + " |")
            continue
        for lap in LAPLACIANS:
            c = r["sample"][lap]
            timing = ([f"{t['median_s']['before']:.3f}", f"{t['median_s']['after']:.3f}",
                       f"{t['ratio']:.2f}"] if lap == "forward" else ["", "", ""])
            lines.append("| " + " | ".join([
                name, lap, f"{c['samples']}",
                *[_ba(c, lambda v, t=t_: _pct(v[f"share_above_{1e3 * t:g}_mha"]))
                  for t_ in THRESHOLDS_HA],
                _ba(c, lambda v: _pct(v["nonfinite_share"])),
                _ba(c, lambda v: _mha(v["max_abs_mha"])),
                f"{c['after_above_0.1_mha_near_psi_node']} of {c['after']['count_above_0.1_mha']}"
                + ("" if c["after_above_0.1_mha_ratio_max"] is None
                   else f", {c['after_above_0.1_mha_ratio_max']:.3g}"),
                *timing]) + " |")
    return "\n".join(lines)


def bisect_table(results: dict) -> str:
    head = ("| system | Laplacian | configs | κ median (min) | carry > 10 mHa | near ψ node | "
            "> 0.1 mHa | max abs ΔE_L (mHa) | after: max ΔE_L/(ε₃₂g²) | non-finite | "
            "ordinary: configs, max abs ΔE_L (mHa) | control: max abs ΔE_L (mHa) |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name, r in results.items():
        b = r.get("bisect")
        if not b:
            continue
        for lap in LAPLACIANS:
            c = b[lap]
            lines.append("| " + " | ".join([
                name, lap, f"{c['samples']}",
                f"{b['cond_median']:.1e} ({b['cond_min']:.1e})",
                f"{b['carry_above_10mha']} (median {_mha(1e3 * b['carry_median_ha'])} mHa)",
                f"{b['near_psi_node']}",
                _ba(c, lambda v: str(v["count_above_0.1_mha"]))
                + f" ({c['after_above_0.1_mha_near_psi_node']} near ψ node)",
                _ba(c, lambda v: _mha(v["max_abs_mha"])),
                f"{c['after_ratio_max']:.3g}",
                _ba(c, lambda v: str(v["nonfinite"])),
                f"{c['ordinary']['configs']}, " + _ba(c["ordinary"],
                                                      lambda v: _mha(v["max_abs_mha"])),
                _ba(c["control"], lambda v: _mha(v["max_abs_mha"]))]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def code_version() -> str:
    """Where the imported vmc comes from: a snapshot (a COMMIT file beside the package,
    e.g. from `git archive HEAD vmc`) or the checkout (its HEAD, plus '+dirty')."""
    pkg = pathlib.Path(vmc.__file__).resolve().parent
    stamp = pkg.parent / "COMMIT"
    if stamp.is_file():
        return f"{stamp.read_text().strip()[:10]} (snapshot {pkg.parent})"
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                          text=True, cwd=pkg).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True,
                           text=True, cwd=pkg).stdout.strip()
    return f"{head}{'+dirty' if dirty else ''} ({pkg})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    p.add_argument("--bisect-systems", nargs="+", default=None,
                   help="systems for the bisection part (default: all of --systems)")
    p.add_argument("--out", default="runs/bench_precision")
    p.add_argument("--pretrain-steps", type=int, default=500)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--burn-in", type=int, default=100)
    p.add_argument("--sample-steps", type=int, default=400)
    p.add_argument("--hessian-every", type=int, default=8)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--timing-steps", type=int, default=15)
    p.add_argument("--only-timing", action="store_true",
                   help="train (or reuse) and time the steps; no sample or bisection part")
    p.add_argument("--bisect-configs", type=int, default=1024)
    p.add_argument("--min-cond", type=float, default=1e7)
    p.add_argument("--control-shift", type=float, default=1e-3,
                   help="bohr: the control points' distance from the near-node ones")
    p.add_argument("--json", help="write all results to this JSON file")
    args = p.parse_args(argv)
    out = (ROOT / args.out) if not pathlib.Path(args.out).is_absolute() else pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bisect_systems = args.bisect_systems or args.systems
    commit = code_version()

    results = {}
    for name in args.systems:
        run_dir = train(name, out, args.pretrain_steps, args.train_steps, args.seed)
        sysm = System(run_dir)
        n_w = sysm.state.mcmc.walkers.shape[0]
        log(f"{name}: {sysm.molecule.n_up}+{sysm.molecule.n_down} electrons, step {sysm.step}, "
            f"{n_w} walkers, {sysm.cfg.sampler.moves} moves/step")
        r = {"run_dir": str(run_dir), "electrons": int(sysm.molecule.n_electrons)}
        tic = time.time()
        r["step_time"] = step_times(sysm, args.timing_steps)
        log(f"  step time before {r['step_time']['median_s']['before']:.3f} s, after "
            f"{r['step_time']['median_s']['after']:.3f} s, ratio {r['step_time']['ratio']:.3f} "
            f"({time.time() - tic:.0f} s)")
        if args.only_timing:
            results[name] = r
            continue
        walkers = sample(sysm, args.burn_in, args.sample_steps, args.seed + 1)
        r["sample"] = {}
        for lap in LAPLACIANS:
            sub = walkers if lap == "forward" else walkers[::args.hessian_every]
            x = sub.reshape((-1,) + walkers.shape[2:])
            vals = {}
            r["sample"][lap] = c = compare(sysm, x, lap, args.batch, vals)
            if lap == "forward":   # the sampled E_L's central 99.8 %: "ordinary" below
                band = np.quantile(vals["ref"][np.isfinite(vals["ref"])], [0.001, 0.999])
                r["sample"]["ref_band_ha"] = [float(band[0]), float(band[1])]
            d = np.abs(vals["after"] - vals["ref"])
            big = np.flatnonzero(~np.isfinite(d) | (d > 1e-4))
            g2 = grad2(sysm, x[big], args.batch) if len(big) else np.zeros(0)
            c["after_above_0.1_mha_near_psi_node"] = int(np.sum(EPS32 * g2 > 1e-4))
            c["after_above_0.1_mha_ratio_max"] = (
                float(np.max(d[big] / (EPS32 * np.maximum(g2, 1.0)))) if len(big) else None)
            log(f"  {lap}: {c['samples']} samples, before {c['before']}, after "
                f"{c['after']}, reference non-finite {c['ref_nonfinite']} "
                f"({c['seconds']:.0f} s)")
        if name in bisect_systems:
            tic = time.time()
            pool = walkers.reshape((-1,) + walkers.shape[2:])
            x, k, cond, tried = near_node(sysm, pool, args.bisect_configs, args.min_cond,
                                          args.seed + 2, args.batch)
            sh = carry(sysm, x, k, args.batch)
            g2 = grad2(sysm, x, args.batch)
            near_psi_node = EPS32 * g2 > 1e-4
            b = {"configs": int(len(x)), "pairs_tried": tried,
                 "cond_median": float(np.median(cond)), "cond_min": float(np.min(cond)),
                 "cond_max": float(np.max(cond)),
                 "carry_median_ha": float(np.median(sh)),
                 "carry_above_10mha": int(np.sum(sh > 0.010)),
                 "near_psi_node": int(np.sum(near_psi_node)),
                 "grad2_median": float(np.median(g2)), "grad2_max": float(np.max(g2))}
            # control: the same configurations moved 1e-3 bohr (all coordinates together)
            # in a random direction, away from the node; what is still wrong there is the
            # float32 network's own error, not the determinant stage's
            rng = np.random.default_rng(args.seed + 3)
            u = rng.normal(size=x.shape)
            u /= np.linalg.norm(u.reshape(len(u), -1), axis=1)[:, None, None]
            xc = (x.astype(np.float64) + args.control_shift * u).astype(np.float32)
            cond_c = _batched_det_cond(_det_cond(sysm), xc.astype(np.float64),
                                       args.batch)[1][np.arange(len(k)), k]
            b["control_shift_bohr"] = args.control_shift
            b["control_cond_median"] = float(np.median(cond_c))
            for lap in LAPLACIANS:
                vals = {}
                b[lap] = c = compare(sysm, x, lap, args.batch, vals)
                c["control"] = compare(sysm, xc, lap, args.batch)
                d = np.abs(vals["after"] - vals["ref"])
                d = np.where(np.isfinite(d), d, np.inf)
                ordinary = (vals["ref"] > band[0]) & (vals["ref"] < band[1])
                c["ordinary"] = {"configs": int(ordinary.sum())}
                for v in VARIANTS:
                    e = vals[v][ordinary]
                    dv = np.abs(e - vals["ref"][ordinary])
                    ok = np.isfinite(e)
                    c["ordinary"][v] = {
                        "nonfinite": int((~ok).sum()),
                        "count_above_0.1_mha": int(np.sum(~ok | (dv > 1e-4))),
                        "max_abs_mha": float(1e3 * dv[ok].max()) if ok.any() else None}
                big = d > 1e-4
                c["after_above_0.1_mha_near_psi_node"] = int(np.sum(big & near_psi_node))
                ratio = d / (EPS32 * np.maximum(g2, 1.0))
                c["after_ratio_max"] = float(np.max(ratio))
                c["after_ratio_median"] = float(np.median(ratio))
                c["worst_after"] = [
                    {"k": int(k[i]), "cond": float(cond[i]), "e_ref_ha": float(vals["ref"][i]),
                     "e_after_ha": float(vals["after"][i]),
                     "e_before_ha": float(vals["before"][i]), "carry_ha": float(sh[i]),
                     "grad2": float(g2[i]), "abs_delta_after_mha": float(1e3 * d[i]),
                     "x": x[i].tolist()}
                    for i in np.argsort(-d)[:5]]
                log(f"  bisection {lap}: {c['samples']} configs, before {c['before']}, "
                    f"after {c['after']}, reference non-finite {c['ref_nonfinite']}; "
                    f"control after {c['control']['after']}")
            b["seconds"] = time.time() - tic
            r["bisect"] = b
        results[name] = r
        jax.clear_caches()

    settings = (f"pretrain {args.pretrain_steps} + train {args.train_steps} steps per system "
                f"(`vmc run systems/X.yaml --set pretrain.steps={args.pretrain_steps} --set "
                f"optim.steps={args.train_steps} --set eval.steps=0 --set run.seed={args.seed}`, "
                f"defaults otherwise: float32 FermiNet 32/8 x 3, 8 full determinants, 256 "
                f"walkers, solver sample, det_precision float64); sampling: burn-in "
                f"{args.burn_in} + {args.sample_steps} recorded steps x 256 walkers x 10 moves, "
                f"frozen parameters and width; Hessian on every {args.hessian_every}th "
                f"recorded step; reference: same parameters in float64 (run.x64 true) at the "
                f"same float32 points")
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    header = [f"# {env}{' '.join(['python', 'scripts/bench_precision.py', *sys.argv[1:]])}",
              f"# vmc {commit}, jax {jax.__version__}, {jax.devices()[0].platform}, "
              f"{os.cpu_count()} cores, {platform.node()}, "
              f"{time.strftime('%Y-%m-%d %H:%M')}, total {time.time() - _T0:.0f} s",
              f"# {settings}"]
    print("\n".join(header))
    print()
    print("Sample part: share of samples with |E_L(float32) − E_L(float64)| above 0.1, 1, 10 mHa "
          "and non-finite, det stage float32 (before) → float64 (after); g² = |∇ log|ψ||² "
          "(float64), ε₃₂ = 2^-24, near ψ node: ε₃₂g² > 0.1 mHa; step: median of "
          f"{args.timing_steps} jitted training steps (256 walkers, forward) each, run back to "
          "back in alternating order; after/before: median of the paired ratios")
    print()
    print(sample_table(results))
    print()
    print(f"Bisection part: configurations bisected onto a node of one determinant, "
          f"κ_k >= {args.min_cond:g} at a float32 point; counts (not shares) before → after; "
          f"carry: configurations where leaving det k out moves E_L by > 10 mHa; near ψ node: "
          f"configurations where 2^-24·|∇ log|ψ||² > 0.1 mHa (a node of ψ itself: ∇² log|ψ| "
          f"and |∇ log|ψ||² cancel, and they are summed in float32); ordinary: configurations "
          f"whose float64 E_L lies in the central 99.8 % of the sampled E_L; control: the "
          f"same configurations moved {args.control_shift:g} bohr in a random direction")
    print()
    print(bisect_table(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"argv": sys.argv, "settings": settings, "commit": commit, "results": results},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
