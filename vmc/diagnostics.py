"""Warnings about an energy estimate that its error bar alone does not show.

Three checks, shared by `vmc run` (final line, summary.json) and `vmc analyze` (table notes,
``--json``), each with what to do about it:

* ``no_plateau``: reblocking found no plateau (`vmc.reblock.reblock`), so the series is too
  short for its correlation time and the error bar is a lower bound;
* ``eval_drift``: the mean of the first quarter of the evaluation differs from the mean of
  its last quarter by more than DRIFT_SIGMA combined (reblocked) standard errors: the chain
  had not equilibrated, or the walkers are stuck;
* ``train_eval_disagree``: the training tail (last 10 % of steps, parameters still moving)
  and the evaluation differ by more than DISAGREE_SIGMA combined standard errors (a series
  without a reblocking plateau counts with its largest blocked error, `cautious_stderr`).

Two more watch the training itself (`training_flags`, from train.h5's per-step columns),
after step TRAIN_AFTER (500):

* ``variance_spike``: a step whose (unclipped) E_L variance exceeds SPIKE_FACTOR (10) times
  the median variance of the SPIKE_WINDOW (200) steps before it, and SPIKE_FLOOR (0.1 Ha²)
  (below that one walker's outlier makes such ratios without harm: the He quick start,
  median ~5·10⁻⁴ Ha², has 66x steps at ~0.03 Ha² and ends within 0.01 mHa of exact); the
  flag counts the brief spikes (`isolated_spikes`: over within 3 steps, one walker far out
  in E_L, not the parameters) and says so when all of them are;
* ``energy_rise``: a RISE_WINDOW (100)-step mean energy more than RISE_SIGMA (5) combined
  standard errors above the lowest such mean before it (consecutive windows; their
  standard error from reblocking the steps after step 500, see `energy_rise`): training
  went uphill.

Energies in hartree (Ha); differences are reported in mHa. No file handling here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from vmc.reblock import MIN_SAMPLES, ReblockResult, blocking_levels, reblock

DRIFT_SIGMA = 3.0
DISAGREE_SIGMA = 3.0
TRAIN_AFTER = 500
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 200
SPIKE_FLOOR = 0.1      # Ha²
ISOLATED_BACK = 2.0    # a spike is brief when, within ISOLATED_WITHIN steps, the variance
ISOLATED_WITHIN = 3    # is back under ISOLATED_BACK x the running median
RISE_WINDOW = 100
RISE_SIGMA = 5.0


@dataclasses.dataclass(frozen=True)
class Flag:
    """One warning: a stable `code`, a one-line `message` with the numbers, and `advice`."""

    code: str
    message: str
    advice: str

    def to_dict(self) -> dict:
        """{code, message, advice} for JSON."""
        return dataclasses.asdict(self)

    def line(self) -> str:
        """'message; advice' for a console line or a table note."""
        return f"{self.message}; {self.advice}"


def quarter_drift(energy) -> Optional[tuple[float, float]]:
    """Difference of the last and first quarter means of a series and its standard error.

    Args:
      energy: (n,) per-step energies, Ha; non-finite entries are dropped first.

    Returns:
      (mean(last quarter) − mean(first quarter), its reblocked standard error), both Ha; None
      when a quarter has fewer than MIN_SAMPLES (16) samples.
    """
    x = np.asarray(energy, dtype=np.float64)
    x = x[np.isfinite(x)]
    q = x.size // 4
    if q < MIN_SAMPLES:
        return None
    first, last = reblock(x[:q]), reblock(x[-q:])
    return last.mean - first.mean, math.hypot(first.stderr, last.stderr)


def cautious_stderr(x) -> tuple[float, float]:
    """(mean, standard error) of a series for a comparison: the reblocked error when
    reblocking finds a plateau, else the largest blocked error over the levels with at least
    4 blocks (the no-plateau error bar is a lower bound; this one is less optimistic)."""
    r = reblock(x)
    if r.plateau:
        return r.mean, r.stderr
    lv = blocking_levels(x)
    ok = lv.n_blocks >= 4
    return r.mean, max(r.stderr, float(np.max(lv.stderr[ok])))


def energy_flags(eval_energy, eval_rb: Optional[ReblockResult], tail_energy=None, *,
                 eval_steps: Optional[int] = None, run_dir: str = "RUN") -> list[Flag]:
    """The warnings that apply to one estimate.

    Args:
      eval_energy: (n,) per-step walker-mean energies of the evaluation, Ha, or None when the
        estimate is not an evaluation (then only ``no_plateau`` of `eval_rb` is checked).
      eval_rb: the reblocked estimate (evaluation, or the training tail when there is no
        evaluation), or None.
      tail_energy: (m,) the training tail's energies (`vmc.analysis.train_tail_series`), Ha,
        or None (no training, or no evaluation to compare with); fewer than 16: no check.
      eval_steps: evaluation steps used, for the advice (default: len(eval_energy)).
      run_dir: the run directory named in the commands of the advice.

    Returns:
      list of Flag, in the order no_plateau, eval_drift, train_eval_disagree.
    """
    out = []
    n = eval_steps if eval_steps is not None else (
        None if eval_energy is None else int(np.size(eval_energy)))
    longer = f"`vmc eval {run_dir} --steps {4 * n if n else 8000}`"
    if eval_rb is not None and not eval_rb.plateau:
        out.append(Flag("no_plateau",
                        f"reblocking found no plateau (tau {eval_rb.tau:.1f} steps): the error "
                        f"bar {1e3 * eval_rb.stderr:.3f} mHa is a lower bound",
                        f"evaluate longer ({longer})"))
    if eval_energy is not None:
        d = quarter_drift(eval_energy)
        if d is not None and d[1] > 0 and abs(d[0]) > DRIFT_SIGMA * d[1]:
            out.append(Flag("eval_drift",
                            f"the evaluation drifts: last quarter minus first quarter "
                            f"{1e3 * d[0]:+.3f} ± {1e3 * d[1]:.3f} mHa "
                            f"({abs(d[0]) / d[1]:.1f} sigma)",
                            f"the walkers had not equilibrated: evaluate again with a longer "
                            f"burn-in and more steps ({longer[:-1]} --burn-in 1000`), or "
                            f"train longer"))
    if (eval_energy is not None and eval_rb is not None and tail_energy is not None
            and np.size(tail_energy) >= MIN_SAMPLES):
        tail_mean, tail_se = cautious_stderr(tail_energy)
        diff = tail_mean - eval_rb.mean
        se = math.hypot(tail_se, cautious_stderr(eval_energy)[1])
        if se > 0 and abs(diff) > DISAGREE_SIGMA * se:
            out.append(Flag("train_eval_disagree",
                            f"the training tail ({tail_mean:.6f} Ha) differs from the "
                            f"evaluation by {1e3 * diff:+.3f} ± {1e3 * se:.3f} mHa "
                            f"({abs(diff) / se:.1f} sigma)",
                            _disagree_advice(diff, run_dir, longer)))
    return out


def _disagree_advice(diff: float, run_dir, longer: str) -> str:
    """What a training tail below (diff < 0) or above the evaluation means.

    Below: the training energies are biased low while the parameters move. Measured on N
    (scripts/training_bias.py, README "Training energies"): continuing a 4000-step run for 500
    steps, the training mean sat 16.9 ± 6.5 mHa below the frozen-parameter evaluation of its
    final parameters at 10 Metropolis moves per step and 3.2 ± 4.8 mHa at 50: each update
    lowers E_L on the walkers it was computed from, and after 10 moves the next step's
    walkers are still close to those; the evaluation is the estimate. Above: the energy was
    still falling during the tail, or the evaluation had not equilibrated.
    """
    if diff < 0:
        return ("training energies are biased low while the parameters move (the next step's "
                "walkers are still close to those the update was fitted to; README \"Training "
                "energies\"): the evaluation is the estimate; train longer to lower it "
                f"(`vmc resume {run_dir} --steps N`)")
    return ("the parameters were still moving or the evaluation is not equilibrated: train "
            f"longer (`vmc resume {run_dir} --steps N`) and evaluate longer ({longer})")


def variance_spikes(variance, steps=None, after: int = TRAIN_AFTER,
                    factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW,
                    floor: float = SPIKE_FLOOR):
    """Steps whose variance exceeds `factor` × the median of the `window` steps before them
    and `floor` (Ha²).

    Args:
      variance: (n,) per-step E_L variance over the walkers, Ha² (non-finite rows: skipped,
        e.g. rejected steps).
      steps: (n,) step numbers (default 0 … n−1); only steps > `after` are checked.
    Returns:
      (step numbers (k,), ratios variance / running median (k,)).
    """
    v = np.asarray(variance, np.float64)
    s = np.arange(v.size) if steps is None else np.asarray(steps)
    ok = np.isfinite(v)
    v, s = v[ok], s[ok]
    hit_steps, ratios = [], []
    for i in range(window, v.size):
        if s[i] <= after:
            continue
        med = float(np.median(v[i - window:i]))
        if med > 0 and v[i] > factor * med and v[i] > floor:
            hit_steps.append(int(s[i]))
            ratios.append(float(v[i] / med))
    return np.asarray(hit_steps, int), np.asarray(ratios)


def isolated_spikes(variance, steps, hits, window: int = SPIKE_WINDOW,
                    back: float = ISOLATED_BACK, within: int = ISOLATED_WITHIN):
    """Which variance spikes are brief: within `within` finite steps after the spike the
    variance is back below `back` × the running median at the spike.

    One walker whose E_L lies far out (near a node of ψ, where E_L ∝ ±1/distance) raises
    one step's variance by (ΔE)²/n_w and is gone after a move or two; a change of the
    parameters that spoils ψ raises the variance for many steps. In the ladder runs with
    the defaults (4000 steps) C had 49 spikes after step 500 and N 44: the mean energy
    moved by ΔE/256 with ΔE = 30–100 Ha of either sign (C), the median of the next step's
    variance was 1.04x the running median, update norm, norm-constraint scale and clip
    fraction at the spikes equalled their medians, and no energy_rise tripped.

    Args:
      variance, steps: as for `variance_spikes`; hits: its step numbers.
    Returns:
      (k,) bool, one per hit.
    """
    v = np.asarray(variance, np.float64)
    s = np.arange(v.size) if steps is None else np.asarray(steps)
    ok = np.isfinite(v)
    v, s = v[ok], s[ok]
    index = {int(t): i for i, t in enumerate(s)}
    out = []
    for t in hits:
        i = index[int(t)]
        med = float(np.median(v[max(i - window, 0):i]))
        out.append(bool(np.any(v[i + 1:i + 1 + within] < back * med)))
    return np.asarray(out, bool)


def energy_rise(energy, steps=None, after: int = TRAIN_AFTER, window: int = RISE_WINDOW,
                sigma: float = RISE_SIGMA):
    """The worst rise of a `window`-step mean energy above the lowest earlier one.

    The series is cut into consecutive windows of `window` steps. The windows ending after
    step `after` give the noise of one window mean robustly, from the median absolute
    difference of consecutive means (σ_w = 1.4826 · median|Δ| / √2; a slow trend or one
    uphill stretch hardly moves it). A window ending after step `after` trips when its mean
    exceeds the lowest earlier window mean by more than `sigma` · √2 · σ_w.

    Args:
      energy: (n,) per-step mean energies, Ha (non-finite rows skipped).
      steps: (n,) step numbers (default 0 … n−1).
    Returns:
      None when nothing trips, else (step at the window's end, rise Ha, rise / (√2 σ_w)).
    """
    e = np.asarray(energy, np.float64)
    s = np.arange(e.size) if steps is None else np.asarray(steps)
    ok = np.isfinite(e)
    e, s = e[ok], s[ok]
    n_w = e.size // window
    if n_w < 2:
        return None
    means = e[:n_w * window].reshape(n_w, window).mean(axis=1)
    ends = s[:n_w * window].reshape(n_w, window)[:, -1]
    late = means[ends > after]
    if late.size < 5:
        return None
    se = 1.4826 * float(np.median(np.abs(np.diff(late)))) / math.sqrt(2.0)
    err = math.sqrt(2.0) * se
    if not err > 0:
        return None
    worst = None
    for i in range(1, n_w):
        if ends[i] <= after:
            continue
        rise = means[i] - np.min(means[:i])
        if rise > sigma * err and (worst is None or rise / err > worst[2]):
            worst = (int(ends[i]), float(rise), float(rise / err))
    return worst


def training_flags(stats: Optional[dict], run_dir: str = "RUN") -> list[Flag]:
    """``variance_spike`` and ``energy_rise`` on a training series (see the module docstring).

    Args:
      stats: train.h5's /stats columns (step, energy, variance; optional rejected, a running
        count: rejected steps are skipped), or None / empty.
    Returns:
      list of Flag (empty when both detectors stay quiet).
    """
    if not stats or "energy" not in stats or len(stats["energy"]) == 0:
        return []
    step = np.asarray(stats["step"])
    energy = np.asarray(stats["energy"], np.float64)
    variance = np.asarray(stats.get("variance", np.full(energy.shape, np.nan)), np.float64)
    if "rejected" in stats:
        rej = np.asarray(stats["rejected"])
        bad = np.diff(np.concatenate([[0.0], rej])) > 0
        energy = np.where(bad, np.nan, energy)
        variance = np.where(bad, np.nan, variance)
    out = []
    hits, ratios = variance_spikes(variance, step)
    if hits.size:
        brief = int(np.sum(isolated_spikes(variance, step, hits)))
        advice = ("the optimization is unstable there: lower optim.lr or raise "
                  "optim.damping, and compare the energy before and after the spikes")
        if brief == hits.size:
            advice = (f"each was over within {ISOLATED_WITHIN} steps: single walkers far "
                      f"out in E_L (near a node), which the clipped gradient leaves out; "
                      f"more walkers shrink them, and only an energy_rise flag would point "
                      f"at the optimizer")
        out.append(Flag("variance_spike",
                        f"training: {hits.size} step(s) after step {TRAIN_AFTER} with a "
                        f"variance over {SPIKE_FACTOR:g}x its {SPIKE_WINDOW}-step median "
                        f"and {SPIKE_FLOOR:g} Ha^2 "
                        f"(first at step {hits[0]}, worst {ratios.max():.0f}x; "
                        f"{brief} back under {ISOLATED_BACK:g}x the median within "
                        f"{ISOLATED_WITHIN} steps)", advice))
    rise = energy_rise(energy, step)
    if rise is not None:
        out.append(Flag("energy_rise",
                        f"training went uphill: the {RISE_WINDOW}-step mean energy ending at "
                        f"step {rise[0]} is {1e3 * rise[1]:.2f} mHa ({rise[2]:.1f} sigma) "
                        f"above its lowest earlier value",
                        f"lower optim.lr, or restart from an earlier checkpoint of {run_dir}"))
    return out
