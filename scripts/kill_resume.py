"""Kill/resume soak: SIGKILL `vmc run` over and over, resume each time, check the result.

    python scripts/kill_resume.py [--kills 20] [--seed 0] [--steps 200] [--out DIR] [--keep]
    python scripts/kill_resume.py --syscalls      # exhaustive: kill at every write syscall

Runs `vmc run tests/data/h2_tiny.yaml --preset tiny` (16 walkers, `--steps` training steps,
a checkpoint every 20, 30 pretraining steps, 16 evaluation steps) under subprocess. First
one uninterrupted calibration run times the phases (start-up, pretraining, training,
evaluation); then the run is SIGKILLed `--kills` times at seeded random moments inside
those phases (numpy RNG with `--seed`), plus kills injected by the test-only switch
VMC_TEST_KILL inside a checkpoint's data, after a checkpoint's temp file is complete,
inside a stats flush and inside an eval.h5 write. Each time it resumes with `--resume`
(exit code 75 or a SIGKILL are expected; any other exit is a failure), then lets the run
finish and verifies:

* the last process exited 0 and summary.json has a finite energy;
* every HDF5 file in the run directory opens with plain h5py and every dataset reads;
* train.h5's stats/step is exactly 0..steps-1 (no gap, no repeat), all columns that long,
  and pretrain/step is 0..P-1;
* every checkpoint verifies its checksum and holds only finite numbers;
* no temporary file is left.

It prints one line per kill and a final PASS/FAIL line, and exits 1 on FAIL.

`--syscalls` instead checks the stats file format itself: a child process appends 12
flushes of 20 rows to a stats file through vmc.h5io.StatsWriter, and is killed by
`strace -e inject=pwrite64:signal=SIGKILL:when=K` at its K-th write syscall, for every K;
after each kill the file must open with plain h5py and hold whole, correct rows.
Needs strace.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "data" / "h2_tiny.yaml"
PRETRAIN_STEPS = 30


def vmc_args(out: pathlib.Path, steps: int, pretrain: int = PRETRAIN_STEPS) -> list[str]:
    return ["run", str(CONFIG), "--out", str(out), "--preset", "tiny",
            "--set", "sampler.walkers=16", "--set", f"optim.steps={steps}",
            "--set", "run.checkpoint_every=20", "--set", "run.log_every=10",
            "--set", f"pretrain.steps={pretrain}", "--set", "eval.steps=16"]


def holds_run(out: pathlib.Path) -> bool:
    return any((out / n).exists() for n in ("config.yaml", "train.h5", "checkpoints",
                                            "summary.json"))


class Phases:
    """The phase of a `vmc run` process, from its log lines."""

    def __init__(self, steps: int, fresh: bool):
        self.steps, self.fresh, self.name = steps, fresh, "start-up"

    def see(self, line: str) -> str | None:
        """Update from one log line; return the name of a phase this line starts."""
        s = self.steps
        if re.match(r"pretrain: \S+ energy", line):   # the HF line, then the steps
            new = "pretraining" if self.fresh else "setup"
        elif line.startswith("hartree-fock:"):
            new = "setup"
        elif re.match(r"pretrain: \d+ steps", line):
            new = "burn-in"
        elif re.match(r"\S+: \d+ up \+ \d+ down electrons", line):
            new = "evaluation" if self.name == "evaluation" else "training"
        elif m := re.match(r"resume: from ckpt_(\d+)", line):
            new = "training" if int(m.group(1)) < s else "evaluation"
        elif re.match(rf"step\s+{s}\b", line):
            new = "evaluation"            # (the final checkpoint, then the evaluation)
        elif re.match(r"step\s+\d+", line) and self.name == "training":
            self.name = "training steps"  # compiled; the steps run
            return self.name
        elif line.startswith("evaluation eval_"):
            new = "summary"
        else:
            return None
        self.name = new
        return new


def run_once(out: pathlib.Path, steps: int, env: dict, target: str | None = None,
             delay: float = 0.0, timeout: float = 900.0, pretrain: int = PRETRAIN_STEPS) -> dict:
    """One `vmc run` (with --resume when the folder holds a run).

    target/delay: SIGKILL the process `delay` s after the phase `target` starts
    ("start-up" starts with the process; "step 40": when the log line of step 40 appears). Returns rc, the phase at the end, the time of
    the kill and when each phase started (s since the start)."""
    args = vmc_args(out, steps, pretrain) + (["--resume"] if holds_run(out) else [])
    fresh = not (out / "checkpoints").is_dir() or not any((out / "checkpoints").glob("ckpt_*.h5"))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "vmc.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    ph, starts, tail = Phases(steps, fresh), {"start-up": 0.0}, []
    deadline = delay if target == "start-up" else None
    killed_at = None
    while True:
        try:
            line = lines.get(timeout=0.005)
        except queue.Empty:
            line = ""
        now = time.time() - t0
        if line is None:
            break
        if line:
            tail = (tail + [line.rstrip()])[-30:]
            new = ph.see(line)
            if new is not None:
                starts.setdefault(new, now)
            hit = target is not None and (new == target or target.startswith("step ") and
                                          re.match(rf"step\s+{target[5:]}\b", line))
            if hit and deadline is None:
                deadline = now + delay
        if deadline is not None and killed_at is None and now >= deadline:
            proc.send_signal(signal.SIGKILL)
            killed_at = now
        if now > timeout:
            proc.kill()
            raise RuntimeError(f"vmc run did not end within {timeout} s")
    rc = proc.wait()
    proc.stdout.close()
    return {"rc": rc, "phase": ph.name, "killed_at": killed_at, "starts": starts,
            "wall": time.time() - t0, "tail": tail}


def plan(kills: int) -> list[tuple[str, str]]:
    """(stage, what) pairs: what is a phase to kill in ("steps": during the training steps),
    or "@" + an injected VMC_TEST_KILL spec. Stage A runs before the first checkpoint
    (start-up, pretraining), B trains, C evaluates (a finished run re-evaluates on resume)."""
    n_a = max(2, round(kills * 0.35))
    n_c = max(1, round(kills * 0.25))
    n_b = max(1, kills - n_a - n_c)
    a = ["start-up" if i % 3 == 1 else "pretraining" for i in range(n_a)]
    b = [("start-up", "compile", "steps", "steps")[i % 4] for i in range(n_b)]
    c = ["evaluation"] * n_c
    b[0:0] = ["@checkpoint_data@1"]
    b.insert(3, "@stats_flush@2")
    b.insert(len(b) // 2 + 2, "@checkpoint_write@2")
    c.insert(len(c) - 1, "@eval_write@1")
    return [("A", w) for w in a] + [("B", w) for w in b] + [("C", w) for w in c]


def last_checkpoint(out: pathlib.Path) -> int:
    return max((int(c.stem[5:]) for c in (out / "checkpoints").glob("ckpt_*.h5")), default=0)


def verify(out: pathlib.Path, steps: int, pretrain: int = PRETRAIN_STEPS) -> list[str]:
    """Check a finished run directory; return the problems found (empty: all good)."""
    import h5py
    sys.path.insert(0, str(ROOT))
    from vmc import checkpoint as ckpt
    bad = []
    summary = out / "summary.json"
    energy = json.loads(summary.read_text()).get("energy_ha") if summary.exists() else None
    if energy is None or not np.isfinite(energy):
        bad.append(f"summary.json energy is {energy!r}")
    n_files = 0
    for p in sorted(out.rglob("*.h5")):
        n_files += 1
        try:
            with h5py.File(p, "r") as f:
                f.visititems(lambda n, d: d[()] if isinstance(d, h5py.Dataset) else None)
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            bad.append(f"{p.relative_to(out)} does not read: {e}")
    try:
        with h5py.File(out / "train.h5", "r") as f:
            step = f["stats/step"][()]
            if not np.array_equal(step, np.arange(steps)):
                dup = len(step) - len(np.unique(step))
                bad.append(f"stats/step is not 0..{steps - 1}: {len(step)} rows, {dup} repeats")
            lens = {k: d.shape[0] for k, d in f["stats"].items()}
            if set(lens.values()) != {steps}:
                bad.append(f"stats column lengths {sorted(set(lens.values()))}")
            pre = f["pretrain/step"][()] if pretrain else np.arange(0)
            if not np.array_equal(pre, np.arange(pretrain)):
                bad.append(f"pretrain/step is not 0..{pretrain - 1}: {len(pre)} rows")
    except Exception as e:  # noqa: BLE001
        bad.append(f"train.h5: {e}")
    n_ckpt = 0
    for p in ckpt.list_checkpoints(out / "checkpoints"):
        n_ckpt += 1
        try:
            for name in ("params", "opt_state", "mcmc"):
                for k, a in ckpt.read_tree_raw(p, name).items():
                    if a.dtype.kind in "fc" and not np.isfinite(a).all():
                        bad.append(f"{p.name}: {name}/{k} is not finite")
        except ckpt.CheckpointError as e:
            bad.append(f"{p.name}: {e}")
    temps = [str(t.relative_to(out)) for t in out.rglob(".*.tmp")]
    if temps:
        bad.append(f"temporary files left: {temps}")
    if not bad:
        print(f"verified: energy {energy:.6f} Ha, {n_files} HDF5 files read, stats/step "
              f"0..{steps - 1}, {n_ckpt} checkpoints verified and finite, no temp files")
    return bad


def child_env() -> dict:
    """The environment for `vmc run`: CPU, this checkout, a JAX compilation cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("VMC_TEST_KILL", "VMC_FAULT_INJECT")}
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
                "VMC_JAX_CACHE": env.get("VMC_JAX_CACHE", str(ROOT / ".jax_cache"))})
    return env


def soak(args) -> int:
    rng = np.random.default_rng(args.seed)
    base = pathlib.Path(args.out or tempfile.mkdtemp(prefix="kill_resume_"))
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    env = child_env()
    cal = run_once(base / "calibration", args.steps, env)
    if cal["rc"] != 0:
        print("\n".join(cal["tail"]))
        print(f"FAIL: the uninterrupted calibration run exited {cal['rc']}")
        return 1
    s = cal["starts"]
    dur = {"start-up": s["pretraining"], "pretraining": s["burn-in"] - s["pretraining"],
           "compile": s["training steps"] - s["training"],
           "steps": s["evaluation"] - s["training steps"],
           "evaluation": s["summary"] - s["evaluation"]}
    print("calibration (s): " + ", ".join(f"{k} {v:.1f}" for k, v in dur.items())
          + f"; total {cal['wall']:.1f}")
    out = base / "run"
    failures, n, missed, schedule = [], 0, 0, plan(args.kills)
    per10 = 10 * dur["steps"] / args.steps       # the time of 10 steps between log lines
    while schedule:
        stage, what = schedule.pop(0)
        e = dict(env)
        if what.startswith("@"):
            e["VMC_TEST_KILL"] = what[1:]
            r = run_once(out, args.steps, e)
            how = f"injected {what[1:]}"
        else:
            u = float(rng.uniform(0.0, 1.0))
            target = {"compile": "training"}.get(what, what)
            if what == "steps":   # after a random step line past the checkpoint, mid-steps
                first = last_checkpoint(out) // 10 + 1
                target = f"step {10 * int(rng.integers(first, max(first, args.steps // 10 - 1) + 1))}"
                delay = 0.9 * u * per10
            else:                 # within the phase, as long as it lasted in calibration
                delay = 0.9 * u * dur[what]
            r = run_once(out, args.steps, e, target, delay)
            how = f"SIGKILL {delay:5.2f} s after {target} starts"
        if r["rc"] == 0 and schedule and missed < 5:   # the run ended first: not a failure
            missed += 1
            print(f"      [{stage}] {how:44s} -> exit   0 before the kill; one more "
                  f"evaluation kill added")
            schedule.append(("C", "evaluation"))
            continue
        n += 1
        landed = r["phase"] if r["rc"] == -signal.SIGKILL else "-"
        print(f"kill {n:2d} [{stage}] {how:44s} -> exit {r['rc']:3d}, landed in {landed}"
              f"{'' if landed == '-' else f' (checkpoint {last_checkpoint(out)})'}")
        if r["rc"] not in (-signal.SIGKILL, 75):
            print("    " + "\n    ".join(r["tail"][-8:]))
            failures.append(f"kill {n}: exit {r['rc']} (expected a SIGKILL or 75)")
            break
    final = run_once(out, args.steps, env)
    print(f"final resume -> exit {final['rc']}")
    if final["rc"] != 0:
        print("    " + "\n    ".join(final["tail"][-8:]))
        failures.append(f"final resume exited {final['rc']}")
    failures += verify(out, args.steps)
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    injected = sum(1 for _, w in plan(args.kills) if w.startswith("@"))
    if n - injected < args.kills:
        print(f"FAIL: only {n - injected} of {args.kills} random kills landed")
        return 1
    print(f"PASS: {n} kills and resumes ({n - injected} random SIGKILLs, {injected} injected), "
          f"run finished and verified")
    if not (args.out or args.keep):
        shutil.rmtree(base, ignore_errors=True)
    return 0


# ------------------------------------------------------------------- --syscalls mode
_CHILD = """
import sys
from vmc.h5io import StatsWriter
w = StatsWriter(sys.argv[1], flush_every=20)
n = int(sys.argv[2])
for step in range(n, n + 240):
    w.append({"step": step, **{f"c{j}": step + j for j in range(14)}})
w.close()
"""


def syscalls(args) -> int:
    import h5py
    sys.path.insert(0, str(ROOT))
    from vmc.h5io import StatsWriter, read_stats
    if shutil.which("strace") is None:
        print("FAIL: --syscalls needs strace")
        return 1
    d = pathlib.Path(tempfile.mkdtemp(prefix="kill_syscalls_"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VMC_TEST_KILL", None)
    bad, total = [], 0
    for start in (900, 1000):   # in place, and across the rebuild at 1024 rows
        base = d / f"base{start}.h5"
        with StatsWriter(base) as w:
            for step in range(start):
                w.append({"step": step, **{f"c{j}": step + j for j in range(14)}})
        trace = d / "trace.txt"
        shutil.copy(base, d / "probe.h5")
        subprocess.run(["strace", "-f", "-o", str(trace), "-e", "trace=pwrite64", sys.executable,
                        "-c", _CHILD, str(d / "probe.h5"), str(start)], env=env, check=True)
        n_writes = sum(1 for x in trace.read_text().splitlines() if "pwrite64(" in x)
        for k in range(1, n_writes + 1):
            f = d / "k.h5"
            shutil.copy(base, f)
            for t in d.glob(".k.h5.*.tmp"):
                t.unlink()
            subprocess.run(["strace", "-f", "-o", "/dev/null", "-e", "trace=pwrite64", "-e",
                            f"inject=pwrite64:signal=SIGKILL:when={k}", sys.executable, "-c",
                            _CHILD, str(f), str(start)], env=env, capture_output=True)
            try:
                with h5py.File(f, "r") as h:
                    for name, ds in h["stats"].items():
                        a = ds[()]
                        j = 0 if name == "step" else int(name[1:])
                        assert np.array_equal(a, np.arange(len(a)) + j), name
                        assert len(a) % 20 == 0 and len(a) >= start, len(a)
                s = read_stats(f)
                assert len({len(v) for v in s.values()}) == 1
            except Exception as e:  # noqa: BLE001
                bad.append(f"start {start}, write {k}: {e}")
        total += n_writes
        print(f"{start} rows + 12 flushes: {n_writes} write syscalls, killed at each: "
              f"{sum(1 for b in bad if b.startswith(f'start {start},'))} unreadable")
    shutil.rmtree(d, ignore_errors=True)
    if bad:
        print("FAIL: " + "; ".join(bad[:5]))
        return 1
    print(f"PASS: {total} kill points, every file opened with plain h5py with whole rows")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="random SIGKILLs (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", help="work folder (default: a temporary one, removed on PASS)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--syscalls", action="store_true",
                    help="kill a stats writer at every write syscall instead (needs strace)")
    args = ap.parse_args(argv)
    return syscalls(args) if args.syscalls else soak(args)


if __name__ == "__main__":
    sys.exit(main())
