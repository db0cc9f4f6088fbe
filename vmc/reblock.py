"""Reblocking: the error bar of the mean of a correlated series (Flyvbjerg & Petersen 1989).

Autocorrelation convention (MATH.md §4): τ = 1 + 2 Σ_k ρ_k, so that the variance of the mean
of n correlated samples is σ²_mean = τ σ² / n. Reblocking estimates σ_mean directly, and we
report τ = (σ_mean / σ_naive)² with σ_naive = σ / √n.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_SAMPLES = 16   # fewer samples than this cannot be reblocked meaningfully
MIN_BLOCKS = 16    # a blocking level is only trusted with at least this many blocks


class BlockingLevel(NamedTuple):
    """Standard error of the mean at every blocking level (Flyvbjerg & Petersen 1989).

    Attributes:
      block_size: (n_levels,) int, samples per block, 2**level.
      n_blocks: (n_levels,) int, blocks at that level.
      stderr: (n_levels,) float64, standard error of the mean estimated from the block means
        (units of the data).
      stderr_err: (n_levels,) float64, the error of that estimate, stderr / √(2 (n_blocks − 1)).
    """

    block_size: np.ndarray
    n_blocks: np.ndarray
    stderr: np.ndarray
    stderr_err: np.ndarray


class ReblockResult(NamedTuple):
    """Mean and reblocked standard error of a correlated series.

    Attributes:
      mean: mean of all samples (units of the data, e.g. Ha).
      stderr: reblocked standard error of the mean (units of the data).
      naive_stderr: σ/√n, the error if the samples were independent.
      block_size: samples per block at the chosen level, 2**level.
      n_blocks: number of blocks at the chosen level.
      tau: autocorrelation time (stderr / naive_stderr)², in samples (MATH.md §4).
      plateau: False when no level meets the Lee–Drummond–Needs criterion (series too short
        for its correlation); stderr is then the largest estimate seen and still a lower bound.
      level: chosen blocking level (number of pair-averaging passes).
    """

    mean: float
    stderr: float
    naive_stderr: float
    block_size: int
    n_blocks: int
    tau: float
    plateau: bool
    level: int


def _as_series(x) -> np.ndarray:
    """Validate a 1-D series and return it as float64."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"reblock: need a 1-D series, got shape {arr.shape}")
    if arr.size < MIN_SAMPLES:
        raise ValueError(f"reblock: need at least {MIN_SAMPLES} samples, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"reblock: {bad} of {arr.size} samples are not finite (NaN or inf)")
    return arr


def blocking_levels(x) -> BlockingLevel:
    """Standard error of the mean at each blocking level.

    Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989): level 0 is the raw series; each next
    level averages neighbouring pairs (an odd last sample is dropped). At each level with
    n_b ≥ 2 blocks, σ_B = std(block means, ddof=1)/√n_b, with error σ_B/√(2(n_b − 1)).

    Args:
      x: (n,) samples, any real dtype (computed in float64).

    Returns:
      BlockingLevel with one entry per level, level 0 first.

    Raises:
      ValueError: x not 1-D, fewer than MIN_SAMPLES samples, or non-finite values.
    """
    y = _as_series(x)
    sizes, counts, errs, err_errs = [], [], [], []
    size = 1
    while y.size >= 2:
        nb = y.size
        se = float(np.std(y, ddof=1) / np.sqrt(nb))
        sizes.append(size)
        counts.append(nb)
        errs.append(se)
        err_errs.append(se / np.sqrt(2.0 * (nb - 1)))
        m = nb // 2
        y = 0.5 * (y[0:2 * m:2] + y[1:2 * m:2])
        size *= 2
    return BlockingLevel(np.asarray(sizes), np.asarray(counts), np.asarray(errs),
                         np.asarray(err_errs))


def reblock(x) -> ReblockResult:
    """Mean and error bar of a correlated series by reblocking, with automatic level choice.

    Blocking as in Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989); the level is the
    smallest block size B with B³ > 2 n (σ_B/σ_0)⁴ (Lee, Drummond & Needs, Phys. Rev. B 84,
    245117 (2011)), n the number of samples, σ_B the standard error estimated at block
    size B and σ_0 = σ/√n. Only levels with at least MIN_BLOCKS blocks are considered. When none
    qualifies, `plateau` is False and the largest σ_B among them is reported (never the naive
    error, which is too small for correlated data).

    Args:
      x: (n,) samples, e.g. per-step mean local energies in Ha; any real dtype (computed in
        float64).

    Returns:
      ReblockResult; tau = (stderr/naive_stderr)², so that stderr² = tau σ²/n (MATH.md §4).

    Raises:
      ValueError: x not 1-D, fewer than MIN_SAMPLES (16) samples, or non-finite values.
    """
    arr = _as_series(x)
    n = arr.size
    mean = float(np.mean(arr))
    levels = blocking_levels(arr)
    sigma0 = float(levels.stderr[0])
    if sigma0 == 0.0:  # constant series: no fluctuation, nothing to block
        return ReblockResult(mean, 0.0, 0.0, 1, n, 1.0, True, 0)
    usable = np.flatnonzero(levels.n_blocks >= MIN_BLOCKS)
    ratio4 = (levels.stderr[usable] / sigma0) ** 4
    ok = levels.block_size[usable].astype(np.float64) ** 3 > 2.0 * n * ratio4
    if np.any(ok):
        level = int(usable[np.argmax(ok)])
        plateau = True
    else:
        level = int(usable[np.argmax(levels.stderr[usable])])
        plateau = False
    stderr = float(levels.stderr[level])
    return ReblockResult(mean=mean, stderr=stderr, naive_stderr=sigma0,
                         block_size=int(levels.block_size[level]),
                         n_blocks=int(levels.n_blocks[level]),
                         tau=(stderr / sigma0) ** 2, plateau=plateau, level=level)
