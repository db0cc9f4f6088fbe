"""Reblocking against series with known autocorrelation (AR(1)) and i.i.d. data."""

import numpy as np
import pytest

from vmc.analysis import MIN_SAMPLES, blocking_levels, reblock


def ar1(phi: float, n: int, seed: int) -> np.ndarray:
    """x_t = phi x_{t-1} + eps_t, eps ~ N(0, 1), started in the stationary distribution."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = eps[0] / np.sqrt(1.0 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + eps[t]
    return x


@pytest.fixture(scope="module")
def ar09():
    return ar1(0.9, 2**18, seed=0)


def test_ar1_stderr_matches_exact(ar09):
    phi, n = 0.9, ar09.size
    # Asymptotic variance of the mean of AR(1): sigma_eps^2 / ((1 - phi)^2 n).
    exact = np.sqrt(1.0 / (1.0 - phi) ** 2 / n)
    r = reblock(ar09)
    assert r.plateau
    assert r.stderr == pytest.approx(exact, rel=0.15)
    # Naive error is too small by sqrt((1 + phi)/(1 - phi)) = sqrt(19).
    assert r.naive_stderr * np.sqrt((1 + phi) / (1 - phi)) == pytest.approx(exact, rel=0.15)
    assert r.tau == pytest.approx((1 + phi) / (1 - phi), rel=0.15)
    assert r.tau == pytest.approx((r.stderr / r.naive_stderr) ** 2)
    assert r.block_size == 2**r.level
    assert r.n_blocks == n // r.block_size
    assert abs(r.mean) < 4 * exact


def test_ar1_level_follows_lee_drummond_needs(ar09):
    """Chosen block size is the smallest B with B^3 > 2n(sigma_B/sigma_0)^4."""
    lv = blocking_levels(ar09)
    r = reblock(ar09)
    crit = lv.block_size**3 > 2 * ar09.size * (lv.stderr / lv.stderr[0]) ** 4
    assert crit[r.level] and not np.any(crit[: r.level])
    # For tau = 19 the criterion needs B^3 > 2 n tau^2 ~ 1.9e8, i.e. B = 1024.
    assert r.block_size == 1024


def test_iid_normal():
    n, sigma = 2**16, 2.5
    x = np.random.default_rng(1).normal(3.0, sigma, size=n)
    r = reblock(x)
    assert r.plateau
    assert r.mean == pytest.approx(3.0, abs=4 * sigma / np.sqrt(n))
    assert r.stderr == pytest.approx(sigma / np.sqrt(n), rel=0.1)
    assert r.naive_stderr == pytest.approx(sigma / np.sqrt(n), rel=0.02)
    assert r.tau == pytest.approx(1.0, rel=0.15)


def test_float32_input_computed_in_float64():
    x = np.random.default_rng(2).normal(1e4, 1e-3, size=4096).astype(np.float32)
    r = reblock(x)
    assert isinstance(r.mean, float)
    assert r.mean == pytest.approx(float(np.mean(x.astype(np.float64))), abs=1e-9)


def test_short_correlated_series_flags_no_plateau():
    x = ar1(0.999, 512, seed=3)
    r = reblock(x)
    assert not r.plateau
    assert r.stderr > 2 * r.naive_stderr
    assert r.tau > 4


def test_constant_series():
    r = reblock(np.full(64, -1.5))
    assert r.mean == -1.5 and r.stderr == 0.0 and r.tau == 1.0


@pytest.mark.parametrize("bad, match", [
    (np.zeros(MIN_SAMPLES - 1), "at least"),
    (np.r_[np.zeros(40), np.nan], "not finite"),
    (np.r_[np.zeros(40), np.inf], "not finite"),
    (np.zeros((8, 8)), "1-D"),
])
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        reblock(bad)
