"""The accuracy ladder beyond five electrons (issue #14): each rung run with nothing but its
molecule file and the defaults, at several step counts, into a JSON-lines results file and
a README table.

    python scripts/ladder.py --all                    # the whole ladder of issue #14 (LADDER)
    python scripts/ladder.py C N                      # C and N at 1000, 4000 and 16000 steps
    python scripts/ladder.py O CO --steps 1000 4000   # any rung at any step counts
    python scripts/ladder.py --write-readme           # only the table, from the results file
    python scripts/ladder.py He --steps 20 40 --preset tiny --out /tmp/ladder   # a smoke test

A rung is any systems/<NAME>.yaml (or examples/<NAME>.yaml); without --steps it runs at its
LADDER step counts (1000 and 4000 for a rung not in LADDER). It trains once per resolved
config, to the largest step count of those that resolve to it (the size rule may depend on
optim.steps: the SR damping beyond five electrons does): `vmc run <file> --out
OUT/<rung>/<tag>/train --set optim.steps=MAX --set run.keep_steps=[the smaller counts]`
(`run.keep_steps` writes checkpoints at those steps and never prunes them; a second config
trains in OUT/<rung>/<tag>/train_<digest>). The run evaluates its own last step. Each smaller count is
evaluated by `vmc eval` in a copy of the run cut back to that checkpoint
(OUT/<rung>/<tag>/at_<steps>: config.yaml, train.h5 up to that step, the one checkpoint), with
the run's own `eval.seed`, so it is the evaluation a `vmc run --set optim.steps=<steps>` would
have made. That is valid because the learning-rate schedule, η₀/(1 + t/t₀) with
t₀ = optim.lr_decay_steps, does not depend on optim.steps, and nothing else in a training step
does (a resumed run is bit-identical, README "Resuming").

Resumable: stop it at any time (Ctrl-C, SIGTERM) and run the same command again. Training
continues from its newest checkpoint (`vmc run --resume`), a finished evaluation is never
repeated (its line in the results file, or its copy's summary.json, is reused) and an
unfinished one starts again in a fresh copy. Asking for more steps later extends the run.

A record of another tag (other defaults version, or --set) whose run resolved to the same
config (`config_digest`: config.yaml less optim.steps, run.keep_steps and the reference) is
carried over instead of repeated, and a training run of the same config under another tag is
extended rather than started again (`carry_over`, `reusable_run`).

Results: runs/ladder_results.jsonl (git tracks it, so the table can be rebuilt anywhere), or
OUT/results.jsonl with --out. `<tag>` is `defaults`, or the `--preset`/`--set` settings (a smoke test never mixes with the
real runs); the README table shows the records with no `--preset` and no `--set` only.
Wall time: HF pretraining + training steps up to that step (train.h5 step_time, the first
step's compilation included) + the evaluation, from run.log.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import accuracy  # noqa: E402  (scripts/accuracy.py: config_file)
import ladder_table  # noqa: E402  (scripts/ladder_table.py: the README table)
from ladder_table import _fmt, write_readme  # noqa: E402,F401  (write_readme re-exported)
from ladder_digest import config_digest, run_digest  # noqa: E402  (a run's config identity)

# the ladder of issue #14, in table order, with the step counts each rung runs at
LADDER = {"C": (1000, 4000, 16000), "N": (1000, 4000, 16000), "O": (1000, 4000),
          "H2O": (1000, 4000), "CH4": (1000, 4000), "N2": (1000, 4000)}
# bumped when a default the rungs use changes (records and run folders of other versions are
# kept apart): 1 = one damping for every size (1e-3), 2 = the damping size rule
# (vmc.size_rule.optim_damping: 0.1 beyond five electrons), 3 = 3000 pretraining steps
# beyond five electrons (vmc.size_rule.pretrain_steps), 4 = 512 walkers beyond five electrons
# (vmc.size_rule.sampler_walkers), 5 = damping 1e-3 beyond five electrons in runs of >= 8000
# steps (vmc.size_rule.optim_damping); records whose resolved config is the same are carried
# over from other versions and settings (carry_over)
DEFAULTS_VERSION = 5
RESULTS = ROOT / "runs" / "ladder_results.jsonl"   # tracked by git (.gitignore), unlike runs/


def config_file(name: str) -> pathlib.Path:
    """systems/<name>.yaml, else examples/<name>.yaml (`accuracy.config_file`)."""
    return accuracy.config_file(name, f"rung {name!r}: ")


def settings_tag(preset: str | None, sets: list[str]) -> str:
    """'defaults_v<DEFAULTS_VERSION>' without --preset or --set, else a readable, unique
    folder name."""
    if preset is None and not sets:
        return f"defaults_v{DEFAULTS_VERSION}"
    text = json.dumps([preset, sorted(sets), DEFAULTS_VERSION])
    return f"{preset or 'set'}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _vmc(*args: str) -> int:
    cmd = [sys.executable, "-m", "vmc.cli", *args]
    print("$ vmc", " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    return subprocess.run(cmd, env=env).returncode


def evaluated_at(run_dir: pathlib.Path) -> int | None:
    """The checkpoint step of the evaluation summary.json reports, or None (no summary, no
    energy, or its eval.h5 group is missing)."""
    import h5py
    summary = run_dir / "summary.json"
    if not summary.is_file() or not (run_dir / "eval.h5").is_file():
        return None
    s = json.loads(summary.read_text())
    if s.get("energy_ha") is None or s.get("group") is None:
        return None
    with h5py.File(run_dir / "eval.h5", "r", locking=False) as f:
        if s["group"] not in f:
            return None
        return int(f[s["group"]].attrs.get("checkpoint_step", -1))


def train(rung: str, run_dir: pathlib.Path, steps: list[int], preset, sets) -> int:
    """Train (or resume, or extend) the rung's run to max(steps), keeping the smaller counts'
    checkpoints; returns the exit code (0 also when it was finished already)."""
    top = max(steps)
    if evaluated_at(run_dir) == top:
        return 0
    args = ["run", str(config_file(rung)), "--out", str(run_dir),
            "--set", f"optim.steps={top}",
            "--set", f"run.keep_steps=[{','.join(str(s) for s in sorted(steps)[:-1])}]"]
    args += (["--preset", preset] if preset else []) + [a for s in sets for a in ("--set", s)]
    from vmc.precheck import holds_run
    return _vmc(*args, *(["--resume"] if holds_run(run_dir) else []))


def trained_steps(run_dir: pathlib.Path) -> int | None:
    """The step of the run's newest checkpoint, or None when it has none."""
    from vmc import checkpoint as ckpt
    paths = ckpt.list_checkpoints(run_dir / "checkpoints")
    return int(ckpt.read_attrs(paths[-1])["step"]) if paths else None


def cut_back(run_dir: pathlib.Path, step: int, out: pathlib.Path) -> None:
    """A fresh copy of the run at `out` as it stood at checkpoint `step`: config.yaml, the
    train.h5 rows of steps before it, run.log's lines up to the training (pretraining), the
    checkpoint. Raises SystemExit when that checkpoint is not there."""
    from vmc import checkpoint as ckpt, h5io
    src = ckpt.checkpoint_path(run_dir / "checkpoints", step)
    if not src.is_file():
        raise SystemExit(f"error: {src}: missing: the run went past step {step} without "
                         f"keeping it (run.keep_steps); evaluate it in a new run (--out)")
    if out.exists():
        shutil.rmtree(out)
    (out / "checkpoints").mkdir(parents=True)
    shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
    shutil.copyfile(src, out / "checkpoints" / src.name)
    shutil.copyfile(run_dir / "train.h5", out / "train.h5")
    with h5io.StatsWriter(out / "train.h5") as writer:
        writer.truncate(step - 1)


def _log_seconds(run_dir: pathlib.Path, pattern: str) -> float:
    log = run_dir / "run.log"
    text = log.read_text() if log.is_file() else ""
    return sum(float(m) for m in re.findall(pattern, text))


def record(rung: str, steps: int, top: int, train_dir: pathlib.Path,
           eval_dir: pathlib.Path, settings: dict) -> dict:
    """The results line of one rung at one step count, from summary.json, train.h5 and
    run.log (energies in Ha, differences in mHa, times in s)."""
    import numpy as np
    from vmc import h5io
    from vmc.config import load_config
    s = json.loads((eval_dir / "summary.json").read_text())
    ref = load_config(train_dir / "config.yaml").molecule.reference
    stats = h5io.read_stats(train_dir / "train.h5")
    train_s = float(np.sum(stats["step_time"][stats["step"] < steps]))
    pretrain_s = (_log_seconds(train_dir, r"pretrain: \S+ energy \S+ Ha \(([\d.]+) s\)")
                  + _log_seconds(train_dir, r"pretrain: \d+ steps in ([\d.]+) s"))
    eval_s = _log_seconds(eval_dir, rf"evaluation {re.escape(s['group'])}: .* in ([\d.]+) s")
    e, se = s["energy_ha"], s["energy_stderr_ha"]
    corr = None
    if ref.hf_limit is not None and ref.energy is not None and s["deviation_mha"] is not None:
        span = ref.hf_limit - ref.energy
        corr = {"pct": 100 * (ref.hf_limit - e) / span,
                "pct_stderr": None if se is None else 100 * se / span}
    return {"rung": rung, "steps": steps, "trained_to": top, "settings": settings,
            "n_electrons": s["n_up"] + s["n_down"], "energy_ha": e, "stderr_ha": se,
            "plateau": s["plateau"], "reference_ha": ref.energy, "reference_kind": ref.kind,
            "hf_limit_ha": ref.hf_limit, "deviation_mha": s["deviation_mha"],
            "deviation_label": s["deviation_label"],
            "corr_pct": None if corr is None else corr["pct"],
            "corr_pct_stderr": None if corr is None else corr["pct_stderr"],
            "pretrain_s": pretrain_s, "train_s": train_s, "eval_s": eval_s,
            "wall_s": pretrain_s + train_s + eval_s, "n_params": s["n_params"],
            "eval_steps": s["eval_steps"], "walkers": s["walkers"], "solver": s["solver"],
            "dtype": s["dtype"], "flags": [f["code"] for f in s.get("flags", [])],
            "run_dir": str(train_dir), "eval_dir": str(eval_dir),
            "git_commit": s.get("git_commit"), "vmc_version": s.get("vmc_version"),
            "jax_version": s.get("jax_version"), "device_kind": s.get("device_kind"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def read_results(path: pathlib.Path) -> list[dict]:
    """The records of the results file, in order ([] when absent); a later record of the
    same rung, step count and settings replaces an earlier one."""
    if not path.is_file():
        return []
    out: dict = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[_key(r["rung"], r["steps"], r["settings"])] = r
    return list(out.values())


def _key(rung: str, steps: int, settings: dict) -> str:
    return json.dumps([rung, int(steps), settings], sort_keys=True)


def expected_digest(rung: str, steps: int, preset, sets) -> str:
    """`config_digest` of the config `vmc run <rung file> --set optim.steps=<steps>` (with
    the preset and --set settings) resolves to: the size rule may depend on the step count."""
    from vmc.config import load_config, to_dict
    cfg = load_config(config_file(rung), preset=preset,
                      overrides=(*sets, f"optim.steps={steps}"))
    return config_digest(to_dict(cfg))


def carry_over(records: list[dict], rung: str, steps: int, digest: str,
               settings: dict) -> dict | None:
    """A record of `rung` at `steps` made with other settings whose run has the resolved
    config `digest`, relabelled with `settings` (its old ones in ``same_config_as``), or None.
    The newest such record wins (checked against its run folder's config.yaml when that is
    still there, which counts settings added since with their defaults; else the record's
    own ``config_digest``)."""
    for r in reversed(records):
        if r["rung"] != rung or r["steps"] != steps or r["settings"] == settings:
            continue
        have = run_digest(r.get("run_dir", "/nonexistent")) or r.get("config_digest")
        if have == digest:
            return {**r, "settings": settings, "config_digest": digest,
                    "same_config_as": r.get("same_config_as") or r["settings"]}
    return None


def run_rung(rung: str, steps: list[int], out: pathlib.Path, results: pathlib.Path,
             preset, sets) -> int:
    """Train the rung, evaluate every step count, append the new records; the exit code."""
    settings = _settings(preset, sets)
    records = read_results(results)
    have = {_key(r["rung"], r["steps"], r["settings"]) for r in records}
    todo = [s for s in sorted(set(steps)) if _key(rung, s, settings) not in have]
    digests = {s: expected_digest(rung, s, preset, sets) for s in todo}
    for s in list(todo):
        rec = carry_over(records, rung, s, digests[s], settings)
        if rec is not None:
            with results.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            todo.remove(s)
            print(f"{rung} at {s} steps: carried over from {rec['run_dir']} (same resolved "
                  f"config): {rec['energy_ha']:.6f} Ha", flush=True)
    if not todo:
        print(f"{rung}: {sorted(set(steps))} steps: all in {results}", flush=True)
        return 0
    base = out / rung / settings_tag(preset, sets)
    groups: dict[str, list[int]] = {}   # one training run per resolved config
    for s in sorted(set(steps)):
        d = digests.get(s) or expected_digest(rung, s, preset, sets)
        groups.setdefault(d, []).append(s)
    for digest, counts in groups.items():
        if not any(s in todo for s in counts):
            continue
        # base/train holds the run of the largest count's config (or whichever config it
        # was made with); another config trains in base/train_<digest>
        held = run_digest(base / "train")
        own = base / f"train_{digest[:8]}"
        first = held == digest or (held is None and max(steps) in counts
                                   and run_digest(own) is None)
        train_dir = base / "train" if first else own
        counts = [s for s in counts if s <= max(s for s in counts if s in todo)]
        if run_digest(train_dir) is None:
            train_dir = reusable_run(out / rung, digest, counts) or train_dir
        code = _train_and_evaluate(rung, counts, [s for s in counts if s in todo], base,
                                   train_dir, results, preset, sets, settings)
        if code != 0:
            return code
    return 0


def reusable_run(rung_dir: pathlib.Path, digest: str, counts: list[int]):
    """A training folder under `rung_dir` (any settings tag) made with the resolved config
    `digest` that can serve every step count of `counts` (it has the checkpoint, or it has
    not got there yet and extends), the furthest trained first; None when there is none."""
    from vmc import checkpoint as ckpt
    found = []
    for run_dir in sorted(rung_dir.glob("*/train*")):
        if run_digest(run_dir) != digest:
            continue
        latest = trained_steps(run_dir)
        if latest is None:
            continue
        if all(s > latest or ckpt.checkpoint_path(run_dir / "checkpoints", s).is_file()
               for s in counts):
            found.append((latest, run_dir))
    return max(found)[1] if found else None


def _train_and_evaluate(rung, counts, todo, base, train_dir, results, preset, sets,
                        settings) -> int:
    """Train one run to max(counts), evaluate the `todo` counts, append their records."""
    latest = trained_steps(train_dir)
    if latest is None or latest < max(todo) or (latest == max(todo)
                                                and evaluated_at(train_dir) != latest):
        code = train(rung, train_dir, sorted(set(counts)), preset, sets)
        if code != 0:
            print(f"{rung}: training stopped with exit code {code}; run the same command "
                  f"again to continue", file=sys.stderr)
            return code
    top = trained_steps(train_dir)
    for s in todo:
        eval_dir = train_dir if evaluated_at(train_dir) == s else base / f"at_{s}"
        if eval_dir != train_dir and evaluated_at(eval_dir) != s:
            from vmc.config import load_config
            cut_back(train_dir, s, eval_dir)
            seed = load_config(train_dir / "config.yaml").eval.seed
            code = _vmc("eval", str(eval_dir), "--seed", str(seed))
            if code != 0:
                print(f"{rung}: evaluation at {s} steps stopped with exit code {code}",
                      file=sys.stderr)
                return code
        rec = {**record(rung, s, top, train_dir, eval_dir, settings),
               "config_digest": run_digest(train_dir)}
        with results.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{rung} at {s} steps: {rec['energy_ha']:.6f} Ha, "
              f"{_fmt(rec['deviation_mha'], '+.1f')} mHa, wall {rec['wall_s']:.0f} s",
              flush=True)
    return 0


def _settings(preset, sets) -> dict:
    """What a record was made with: --preset, --set and the version of the defaults."""
    return {"preset": preset, "set": sorted(sets), "defaults": DEFAULTS_VERSION}


DEFAULTS = _settings(None, [])


def table(records: list[dict], plan: dict, settings: dict = DEFAULTS) -> str:
    """The README table of the records made with `settings` (`ladder_table.table`)."""
    return ladder_table.table(records, plan, settings, settings == DEFAULTS)


def main(argv=None) -> int:
    """Run the rungs named, then print (and with --write-readme write) the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rungs", nargs="*", help=f"systems to run (the ladder: {' '.join(LADDER)})")
    p.add_argument("--all", action="store_true", help="run every rung of the ladder")
    p.add_argument("--steps", nargs="+", type=int,
                   help="step counts (default: the rung's in LADDER, else 1000 4000); "
                        "training goes to the largest")
    p.add_argument("--out", help="run directories (default runs/ladder)")
    p.add_argument("--results", help="JSON-lines results file (default: "
                   "runs/ladder_results.jsonl, which git tracks, or OUT/results.jsonl with --out)")
    p.add_argument("--preset", help="passed to vmc run (e.g. tiny, for a smoke test)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to vmc run (repeatable)")
    p.add_argument("--write-readme", action="store_true",
                   help="write the table into README.md's ladder block")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps and any(s < 1 for s in args.steps):
        p.error(f"--steps: {min(args.steps)} is not valid; valid: >= 1")
    for s in args.sets:
        if s.split("=", 1)[0].strip() in ("optim.steps", "run.keep_steps"):
            p.error(f"--set {s}: set by the ladder itself; use --steps")
    out = pathlib.Path(args.out) if args.out else ROOT / "runs" / "ladder"
    results = (pathlib.Path(args.results) if args.results else out / "results.jsonl"
               if args.out else RESULTS)
    results.parent.mkdir(parents=True, exist_ok=True)
    code = 0
    rungs = list(LADDER) + [r for r in args.rungs if r not in LADDER] if args.all else args.rungs
    for rung in rungs:
        config_file(rung)
    for rung in rungs:
        steps = args.steps or list(LADDER.get(rung, (1000, 4000)))
        code = run_rung(rung, steps, out, results, args.preset, args.sets) or code
    text = table(read_results(results), LADDER, _settings(args.preset, args.sets))
    print(text)
    if args.write_readme:
        write_readme(pathlib.Path(args.readme), text)
        print(f"{args.readme} updated", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
