"""The README table of scripts/ladder.py's records, and the README block it is written into.

A record carried over from a run made with other settings, whose resolved config is the one
these settings give at that step count (`ladder.carry_over`, field ``same_config_as``), is
marked ‡ and named under the table.
"""

from __future__ import annotations

import pathlib

MARKER = "ladder"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _describe(settings: dict) -> str:
    """'`--set a=1` on defaults version 4' (or 'defaults version 4') for a record's settings."""
    parts = ([f"--preset {settings['preset']}"] if settings.get("preset") else [])
    parts += [f"--set {x}" for x in settings.get("set", [])]
    version = f"defaults version {settings.get('defaults')}"
    return f"`{' '.join(parts)}` on {version}" if parts else version


def table(records: list[dict], plan: dict, settings: dict, is_defaults: bool) -> str:
    """The table of the records made with `settings`: every rung and step count of `plan`
    (those without a record say 'not yet run'), then the other rungs and counts that have
    one; `is_defaults` names them "Defaults" in the line under it."""
    by = {(r["rung"], r["steps"]): r for r in records if r["settings"] == settings}
    rows = ["| system | e⁻ | steps | energy (Ha) | stderr (mHa) | reference (Ha), kind | "
            "E − ref (mHa) | corr. energy % | wall (s) | params |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    keys = [(rung, s) for rung, counts in plan.items() for s in counts]
    keys += sorted(k for k in by if k not in keys)
    carried = {}
    for rung, s in keys:
        r = by.get((rung, s))
        if r is None:
            rows.append(f"| {rung} | | {s} | not yet run | | | | | | |")
            continue
        se = None if r["stderr_ha"] is None else 1000 * r["stderr_ha"]
        low = ">=" if r["plateau"] is False else ""
        corr = ("-" if r["corr_pct"] is None else f"{r['corr_pct']:.1f}"
                + ("" if r["corr_pct_stderr"] is None else f" ± {r['corr_pct_stderr']:.1f}"))
        src = "" if r["trained_to"] == s else f" (of {r['trained_to']})"
        mark = ""
        if r.get("same_config_as"):
            mark = " ‡"
            carried.setdefault(_describe(r["same_config_as"]), []).append(f"{rung} {s}")
        rows.append(f"| {rung} | {r['n_electrons']} | {s}{src}{mark} | {r['energy_ha']:.6f} | "
                    f"{low}{_fmt(se, '.3f')} | {r['reference_ha']}, {r['reference_kind']} | "
                    f"{_fmt(r['deviation_mha'], '+.3f')} | {corr} | {r['wall_s']:.0f} | "
                    f"{r['n_params']} |")
    done = list(by.values())
    what = ("Defaults" if is_defaults else
            f"Settings: {'--preset ' + settings['preset'] if settings['preset'] else ''} "
            f"{' '.join('--set ' + x for x in settings['set'])}".strip())
    if done:
        meta = done[-1]
        rows += ["", f"{what} ({meta['dtype']}, {meta['walkers']} walkers, solver "
                 f"`{meta['solver']}`, {meta['eval_steps']} evaluation steps); vmc "
                 f"{meta['vmc_version']} ({(meta['git_commit'] or '')[:8]}), jax "
                 f"{meta['jax_version']}, {meta['device_kind']}. Written by scripts/ladder.py."]
        for how, which in carried.items():
            rows += ["", f"‡ {', '.join(which)}: trained with {how}, whose resolved config "
                     f"(config.yaml less optim.steps, run.keep_steps and the reference) is "
                     f"the one these settings give at that step count."]
    else:
        rows += ["", f"{what}: no rung run yet. Written by scripts/ladder.py."]
    return "\n".join(rows)


def write_readme(readme: pathlib.Path, text: str) -> None:
    """Replace what stands between `<!-- ladder:begin -->` and `<!-- ladder:end -->`."""
    begin, end = f"<!-- {MARKER}:begin -->", f"<!-- {MARKER}:end -->"
    body = readme.read_text()
    if begin not in body or end not in body:
        raise SystemExit(f"error: {readme}: no {begin} ... {end} block")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
