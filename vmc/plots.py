"""Figures of `vmc analyze`: training curve, variance, sampler, energy along a geometry scan.

Every function returns a matplotlib Figure on an Agg canvas, built without pyplot (no global
figure registry, nothing to close); matplotlib is imported inside the functions, so importing
`vmc` never pulls it in. Energies in Ha, variances in Ha², widths and distances in bohr. The
caller saves the figure with ``fig.savefig(path)``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from vmc.analysis import CHEMICAL_ACCURACY_HA, EXACT_KINDS, RunData, RunSummary

ENERGY_LABEL = "energy (Ha)"


def _figure(**kw):
    """A new Figure on an Agg canvas, without pyplot (no global state, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def integer_steps(ax) -> None:
    """Step axis with integer ticks only (short runs would get half steps)."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mean_label(w: int) -> str:
    return f"running mean ({w} step{'s' if w != 1 else ''})"


def running_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` samples (shorter at the ends), skipping non-finite.

    Args:
      x: (n,) values; non-finite entries are ignored.
      window: number of samples averaged, >= 1.

    Returns:
      (n,) float64; NaN where the window holds no finite value.
    """
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    s = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    c = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(x.size)
    lo = np.maximum(i - window // 2, 0)
    hi = np.minimum(i + window - window // 2, x.size)
    cnt = c[hi] - c[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (s[hi] - s[lo]) / cnt, np.nan)


def _window(n: int) -> int:
    return max(1, min(1000, n // 20))


def _converged_ylim(values: np.ndarray, extra: Sequence[float]) -> Optional[tuple]:
    """y-range covering the second half of `values` (1–99 %) and the `extra` levels."""
    tail = values[values.size // 2:]
    tail = tail[np.isfinite(tail)]
    pts = [float(v) for v in extra if v is not None and np.isfinite(v)]
    if tail.size:
        pts += list(np.percentile(tail, [1, 99]))
    if not pts:
        return None
    lo, hi = min(pts), max(pts)
    pad = max(0.15 * (hi - lo), 2 * CHEMICAL_ACCURACY_HA)
    return lo - pad, hi + pad


def plot_training(run: RunData, summary: Optional[RunSummary] = None):
    """Training energy per step, its running mean, the reference ± chemical accuracy; with a
    reference, a second panel with |E − E_ref| in mHa on a log axis.

    Args:
      run: loaded run (`vmc.analysis.load_run`); uses stats 'step', 'energy' (Ha).
      summary: optional `summarize` result; its evaluations are drawn as error bars at their
        checkpoint step.

    Returns:
      Figure: Axes 0, x 'step', y 'energy (Ha)': the reference as an axhline (label
      'reference (<kind>)') with a ±1.6 mHa band, y-limits covering the second half of
      training so early transients do not squash the converged part. With a reference, Axes 1
      (shared x), y '|E − E_ref| (mHa)' log-scaled: per step, the running mean, the
      evaluations, and the chemical-accuracy line at 1.6 mHa.

    Raises:
      ValueError: the run has no training stats.
    """
    if not run.stats:
        raise ValueError(f"{run.run_dir}: no training stats to plot")
    step = np.asarray(run.stats["step"])
    energy = np.asarray(run.stats["energy"], dtype=np.float64)
    w = _window(energy.size)
    avg = running_mean(energy, w)
    ref = run.reference
    fig = _figure(figsize=(7.5, 7.5 if ref is not None else 5))
    axes = fig.subplots(2 if ref is not None else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.plot(step, energy, lw=0.6, color="0.7", label="energy per step")
    if w > 1:
        ax.plot(step, avg, lw=1.6, color="C0", label=_mean_label(w))
    if ref is not None:
        ax.axhspan(ref.energy - CHEMICAL_ACCURACY_HA, ref.energy + CHEMICAL_ACCURACY_HA,
                   color="C2", alpha=0.15, lw=0, label="±1.6 mHa (chemical accuracy)")
        ax.axhline(ref.energy, color="C2", lw=1.2, ls="--", label=f"reference ({ref.kind})")
    evals = [] if summary is None else [e for e in summary.evals if e.checkpoint_step is not None]
    if evals:
        ax.errorbar([e.checkpoint_step for e in evals], [e.energy for e in evals],
                    yerr=[e.stderr for e in evals], fmt="o", color="C3", ms=4, capsize=3,
                    label="evaluation (1σ)")
    lim = _converged_ylim(avg, [ref.energy if ref else None]
                          + [e.energy for e in evals])
    if lim:
        ax.set_ylim(*lim)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylabel(ENERGY_LABEL)
    ax.set_title(f"{run.name}: training energy")
    if ref is not None:
        _error_panel(axes[1], step, energy, avg, w, ref, evals)
    for a in axes:
        a.grid(alpha=0.3, which="both")
        integer_steps(a)
    axes[-1].set_xlabel("step")
    fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    return fig


def _error_panel(ax, step, energy, avg, w, ref, evals) -> None:
    """|E − E_ref| in mHa, log axis, with the chemical-accuracy line."""
    with np.errstate(invalid="ignore"):
        per = 1e3 * np.abs(energy - ref.energy)
        mean = 1e3 * np.abs(avg - ref.energy)
    floor = 1e-3   # mHa: zero differences would vanish from a log axis
    ax.plot(step, np.maximum(per, floor), lw=0.5, color="0.75")
    if w > 1:
        ax.plot(step, np.maximum(mean, floor), lw=1.6, color="C0")
    ax.axhline(1e3 * CHEMICAL_ACCURACY_HA, color="C2", lw=1.2, ls="--")
    ax.text(step[0], 1e3 * CHEMICAL_ACCURACY_HA, " chemical accuracy 1.6 mHa", color="C2",
            va="bottom", fontsize="small")
    if evals:
        d = [max(1e3 * abs(e.energy - ref.energy), floor) for e in evals]
        ax.errorbar([e.checkpoint_step for e in evals], d,
                    yerr=[[min(1e3 * e.stderr, x - floor / 2) for e, x in zip(evals, d)],
                          [1e3 * e.stderr for e in evals]],
                    fmt="o", color="C3", ms=4, capsize=3)
    ax.set_yscale("log")
    finite = per[np.isfinite(per) & (per > 0)]
    if finite.size:
        ax.set_ylim(max(floor, min(0.3, 0.5 * np.percentile(finite, 1))),
                    2 * max(np.max(finite), 10.0))
    label = "error" if ref.kind in EXACT_KINDS else "E − E_ref"
    ax.set_ylabel(f"|{label}| (mHa)" if label == "error" else "|E − E_ref| (mHa)")


def plot_variance(run: RunData):
    """Variance of the local energy per training step (log scale) with its running mean.

    Args:
      run: loaded run; uses stats 'step' and 'variance' (Ha²).

    Returns:
      Figure with one Axes: x 'step', y 'variance of E_L (Ha²)', log-scaled.

    Raises:
      ValueError: no 'variance' column in the training stats.
    """
    if "variance" not in run.stats:
        raise ValueError(f"{run.run_dir}: no training variance to plot")
    step = np.asarray(run.stats["step"])
    var = np.asarray(run.stats["variance"], dtype=np.float64)
    var = np.where(var > 0, var, np.nan)
    w = _window(var.size)
    fig = _figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    ax.plot(step, var, lw=0.6, color="0.7", label="per step")
    if w > 1:
        ax.plot(step, running_mean(var, w), lw=1.6, color="C1", label=_mean_label(w))
    integer_steps(ax)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("variance of E_L (Ha²)")
    ax.set_title(f"{run.name}: local-energy variance")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_sampler(run: RunData):
    """Metropolis acceptance rate and proposal width per training step.

    Args:
      run: loaded run; uses stats 'step', 'pmove' (fraction) and 'width' (bohr) if present.

    Returns:
      Figure with two Axes sharing x: 'acceptance rate' (the target, config
      sampler.target_pmove, default 0.5, drawn) and 'width (bohr)'.

    Raises:
      ValueError: neither 'pmove' nor 'width' in the training stats.
    """
    if "pmove" not in run.stats and "width" not in run.stats:
        raise ValueError(f"{run.run_dir}: no sampler stats (pmove, width) to plot")
    step = np.asarray(run.stats["step"])
    fig = _figure(figsize=(7.5, 5))
    a1, a2 = fig.subplots(2, 1, sharex=True)
    if "pmove" in run.stats:
        a1.plot(step, run.stats["pmove"], lw=0.8, color="C0")
    target = float((run.config.get("sampler") or {}).get("target_pmove", 0.5))
    a1.axhline(target, color="k", lw=0.8, ls=":", label=f"target {target:g} "
               "(sampler.target_pmove)")
    a1.set_ylim(0, 1)
    a1.set_ylabel("acceptance rate")
    a1.legend(loc="lower right", fontsize="small")
    if "width" in run.stats:
        a2.plot(step, run.stats["width"], lw=0.8, color="C1")
    a2.set_ylabel("width (bohr)")
    a2.set_xlabel("step")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        integer_steps(a)
    a1.set_title(f"{run.name}: sampler")
    return fig


def plot_curve(summaries: Sequence[RunSummary], parameter_values: Sequence[float],
               param_label: str):
    """Energy along a geometry parameter, with error bars and reference energies where known.

    Args:
      summaries: one RunSummary per geometry (runs without an energy are skipped).
      parameter_values: (n_runs,) parameter value of each run, in the unit of `param_label`.
      param_label: x-axis label with its unit, e.g. 'bond length (bohr)'.

    Returns:
      Figure with one Axes: x `param_label`, y 'energy (Ha)'; VMC points with 1σ error bars,
      references drawn as open markers (squares for exact kinds, diamonds otherwise).

    Raises:
      ValueError: lengths of `summaries` and `parameter_values` differ.
    """
    if len(summaries) != len(parameter_values):
        raise ValueError(f"plot_curve: {len(summaries)} summaries but "
                         f"{len(parameter_values)} parameter values")
    order = np.argsort(np.asarray(parameter_values, dtype=np.float64))
    pts = [(float(parameter_values[i]), summaries[i]) for i in order]
    vmc = [(x, s) for x, s in pts if s.energy is not None]
    fig = _figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if vmc:
        ax.errorbar([x for x, _ in vmc], [s.energy for _, s in vmc],
                    yerr=[s.stderr or 0.0 for _, s in vmc], fmt="o-", color="C0", ms=4,
                    capsize=3, label="VMC")
    for exact, marker in ((True, "s"), (False, "D")):
        group = [(x, s) for x, s in pts if s.reference is not None
                 and (s.reference_kind in EXACT_KINDS) == exact]
        ref = [(x, s.reference) for x, s in group]
        kinds = sorted({str(s.reference_kind or "unknown kind") for _, s in group})
        label = f"reference ({', '.join(kinds)})"   # the kinds the files give
        if ref:
            ax.plot(*zip(*ref), ls="--" if exact else ":", marker=marker, mfc="none",
                    color="C2" if exact else "C3", label=label)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel(param_label)
    ax.set_ylabel(ENERGY_LABEL)
    names = sorted({s.name.split("_")[0] for _, s in pts if s.name})
    ax.set_title(f"{', '.join(names)}: energy curve (error bars 1σ, reblocked)" if names
                 else "energy curve (error bars 1σ, reblocked)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_density(density: dict, title: str = ""):
    """Radial density ρ(r) (electrons/bohr³, log scale) and the axial profile (electrons per
    bohr along z) with error bars, from `vmc.obs_report.summarize_observables`'s 'density'."""
    fig = _figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    for ax, key, edges, ylabel, log in (
            (ax1, "radial", "radial_edges_bohr", "ρ(r) (electrons/bohr³)", True),
            (ax2, "axial", "axial_edges_bohr", "electrons per bohr along z", False)):
        e = np.asarray(density[edges])
        mid = 0.5 * (e[1:] + e[:-1])
        m = np.asarray(density[key]["mean"], np.float64)
        err = np.asarray(density[key]["stderr"], np.float64)
        ax.errorbar(mid, m, yerr=err, fmt=".", ms=3, capsize=1.5)
        if log and np.any(m > 0):
            ax.set_yscale("log")
        ax.set_xlabel("r − centre (bohr)" if key == "radial" else "z − centre (bohr)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{key}: {100 * density[key + '_outside_share']:.2g} % outside the grid",
                     fontsize=9)
    if title:
        fig.suptitle(f"electron density, {title}", fontsize=10)
    return fig
