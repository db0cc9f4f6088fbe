"""Figures of `vmc analyze` about the estimate itself: the evaluation trace with its blocked
means and the reblocking curve (evaluation.png), and the pretraining loss (pretrain.png).

Built like `vmc.plots` (a Figure on an Agg canvas, no pyplot). Energies in Ha, errors in mHa.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vmc.analysis import CHEMICAL_ACCURACY_HA, RunData, RunSummary
from vmc.plots import _figure, integer_steps
from vmc.reblock import MIN_BLOCKS, blocking_levels, reblock


def _estimate_group(run: RunData, summary: Optional[RunSummary]):
    """The EvalData the summary's estimate comes from (the newest usable group)."""
    name = None if summary is None else summary.group
    for ev in reversed(run.evals):
        if name is None or ev.name == name:
            return ev
    return None


def plot_evaluation(run: RunData, summary: Optional[RunSummary] = None):
    """Evaluation trace with blocked means, and the reblocking curve.

    Args:
      run: loaded run with at least one evaluation.
      summary: its `summarize` result (picks the group of the estimate; default the newest).

    Returns:
      Figure with two Axes. Top: x 'evaluation step', y 'energy (Ha)': the per-step walker
      mean (grey), the means of the blocks of the chosen reblocking level with their spread
      (orange), the overall mean ± 1σ band, the first- and last-quarter means (the drift
      check), and the reference when it lies within the plotted range. Bottom: x 'block size
      (steps)' (log₂), y 'standard error (mHa)': the reblocking curve σ_B ± its error, the chosen
      level marked, levels with fewer than 16 blocks dashed; the title says whether a plateau
      was found.

    Raises:
      ValueError: no usable evaluation (fewer than 16 finite step energies).
    """
    ev = _estimate_group(run, summary)
    if ev is None:
        raise ValueError(f"{run.run_dir}: no evaluation to plot")
    e = ev.energy
    ok = np.isfinite(e)
    x = e[ok]
    if x.size < 16:
        raise ValueError(f"{run.run_dir}: {ev.name} has {x.size} finite steps, fewer than 16")
    steps = np.flatnonzero(ok)
    rb = reblock(x)
    lv = blocking_levels(x)
    fig = _figure(figsize=(10, 7.5))
    top, bottom = fig.subplots(2, 1)
    top.plot(steps, x, lw=0.5, color="0.7", label="walker mean per step")
    b = rb.block_size
    nb = x.size // b
    means = x[:nb * b].reshape(nb, b).mean(axis=1)
    centers = steps[:nb * b].reshape(nb, b).mean(axis=1)
    top.step(centers, means, where="mid", color="C1", lw=1.4,
             label=f"block means ({b} steps per block)")
    top.axhspan(rb.mean - rb.stderr, rb.mean + rb.stderr, color="C0", alpha=0.25, lw=0)
    top.axhline(rb.mean, color="C0", lw=1.2,
                label=f"mean {rb.mean:.6f} ± {1e3 * rb.stderr:.3f} mHa"
                      + ("" if rb.plateau else " (lower bound)"))
    q = x.size // 4
    if q >= 16:
        for sl, name in ((slice(0, q), "first"), (slice(x.size - q, x.size), "last")):
            top.plot([steps[sl][0], steps[sl][-1]], [x[sl].mean()] * 2, color="C3", lw=2.2,
                     ls="-" if name == "first" else "--")
        top.plot([], [], color="C3", lw=2.2, label="first / last quarter mean")
    ref = run.reference
    lo, hi = np.percentile(x, [1, 99])
    if ref is not None and lo - 0.5 * (hi - lo) <= ref.energy <= hi + 0.5 * (hi - lo):
        top.axhline(ref.energy, color="C2", ls="--", lw=1.0, label=f"reference ({ref.kind})")
        top.axhspan(ref.energy - CHEMICAL_ACCURACY_HA, ref.energy + CHEMICAL_ACCURACY_HA,
                    color="C2", alpha=0.1, lw=0)
    pad = 0.15 * (hi - lo) + 1e-6   # outliers must not squash the mean and the blocks
    top.set_ylim(min(lo, means.min()) - pad, max(hi, means.max()) + pad)
    top.ticklabel_format(axis="y", useOffset=False)
    top.set_xlabel("evaluation step")
    top.set_ylabel("energy (Ha)")
    top.set_title(f"{run.name}: evaluation {ev.name} ({x.size} steps)")
    top.grid(alpha=0.3)
    integer_steps(top)
    top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    trusted = lv.n_blocks >= MIN_BLOCKS
    se, err = 1e3 * lv.stderr, 1e3 * lv.stderr_err
    bottom.errorbar(lv.block_size[trusted], se[trusted], yerr=err[trusted], fmt="o-",
                    color="C0", ms=4, capsize=3, label="σ of the mean at block size B")
    if np.any(~trusted):
        k = np.flatnonzero(~trusted)
        k = np.r_[k[0] - 1, k] if k[0] > 0 else k
        bottom.plot(lv.block_size[k], se[k], "o--", color="0.6", ms=3,
                    label=f"fewer than {MIN_BLOCKS} blocks (not used)")
    bottom.plot([rb.block_size], [1e3 * rb.stderr], "*", color="C3", ms=14,
                label=f"chosen: B = {rb.block_size}, τ = {rb.tau:.1f} steps")
    bottom.set_xscale("log", base=2)
    bottom.set_xlabel("block size B (steps)")
    bottom.set_ylabel("standard error (mHa)")
    bottom.set_title("reblocking: plateau found" if rb.plateau else
                     "reblocking: NO plateau, the error bar is a lower bound")
    bottom.grid(alpha=0.3, which="both")
    bottom.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
    return fig


def plot_pretrain(run: RunData):
    """Hartree–Fock pretraining loss per step (log axis).

    Args:
      run: loaded run; uses train.h5 /pretrain 'step' and 'loss' (the orbital mismatch,
        dimensionless).

    Returns:
      Figure with one Axes: x 'pretraining step', y 'loss', log-scaled.

    Raises:
      ValueError: no pretraining recorded.
    """
    p = run.pretrain
    if not p or "loss" not in p or np.size(p["loss"]) == 0:
        raise ValueError(f"{run.run_dir}: no pretraining recorded")
    loss = np.asarray(p["loss"], dtype=np.float64)
    step = np.asarray(p.get("step", np.arange(loss.size)))
    fig = _figure(figsize=(7.5, 4))
    ax = fig.subplots()
    ax.plot(step, np.where(loss > 0, loss, np.nan), lw=0.8, color="C4")
    ax.set_yscale("log")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("loss (orbitals vs Hartree–Fock)")
    ax.set_title(f"{run.name}: pretraining")
    ax.grid(alpha=0.3, which="both")
    integer_steps(ax)
    return fig
