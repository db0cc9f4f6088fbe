"""Evaluation to an error-bar target (`eval.target_stderr_mha`, vmc.evaluate.next_length)."""

import jax
import numpy as np
import pytest

from vmc import analysis
from vmc.config import config_from_dict
from vmc.evaluate import evaluate, next_length
from vmc.sampler import init_walkers
from vmc.train import build

HE = [{"symbol": "He", "position": [0.0, 0.0, 0.0]}]


def test_next_length_scales_as_the_inverse_square_of_the_target():
    rng = np.random.default_rng(0)
    e = -2.9 + 0.01 * rng.normal(size=1024)          # independent: σ_mean ≈ 3.1e-4 Ha
    se = analysis.reblock(e).stderr
    assert next_length(e, 2 * se, 10**6) == 1024        # reached: stop
    want = next_length(e, se / 4, 10**6)                # 16× the samples (and 10 % more)
    assert 1.1 * 16 * 1024 <= want <= 1.1 * 16 * 1024 + 1
    assert next_length(e, se / 4, 5000) == 5000          # the cap
    assert next_length(e, se / 1.01, 10**6) == 1024 + 256   # at least a quarter more


@pytest.fixture(scope="module")
def he_hf():
    cfg = config_from_dict({"atoms": HE}, name="He",
                           overrides=("ansatz.name=hf", "pretrain.basis=cc-pvdz",
                                      "sampler.walkers=64"))
    setup = build(cfg)
    key = jax.random.PRNGKey(3)
    w = init_walkers(jax.random.fold_in(key, 0), setup.molecule, 64, 1.0, setup.dtype)
    return setup, w, jax.random.fold_in(key, 1)


def test_evaluation_runs_on_to_its_error_bar_target_and_keeps_the_same_chain(x64, he_hf):
    setup, w, key = he_hf
    fixed = evaluate(setup, {}, w, 0.3, steps=128, burn_in=10, key=key)
    first = analysis.reblock(fixed.energy)
    assert first.plateau, first
    target = first.stderr / 2.5                          # needs ~6× the steps
    res = evaluate(setup, {}, w, 0.3, steps=128, burn_in=10, key=key, target_stderr=target,
                   max_steps=8192)
    n = len(res.energy)
    assert 128 * 4 <= n < 8192, n
    # the first 128 steps are the fixed-length evaluation's, bit for bit
    np.testing.assert_array_equal(res.energy[:128], fixed.energy)
    got = analysis.reblock(res.energy)
    assert got.stderr <= target and got.plateau, (got, target)
    # a target already met: no extension
    assert len(evaluate(setup, {}, w, 0.3, steps=128, burn_in=10, key=key,
                        target_stderr=2 * first.stderr).energy) == 128


def test_missed_target_warning_says_above_or_no_plateau():
    """A bar above the target says so; a bar within it that failed only for want of a
    reblocking plateau says it is a lower bound, not 'above' (it was: 1.6 mHa 'above' 2)."""
    from vmc.evaluate import target_missed_warning
    low = target_missed_warning("eval_000", 1.6e-3, False, 400, 2.0)
    assert "above" not in low, low
    assert low.startswith("warning: evaluation eval_000: error bar 1.6 mHa after 400 steps "
                          "(eval.max_steps) is within eval.target_stderr_mha 2, but "
                          "reblocking found no plateau, so it is only a lower bound"), low
    high = target_missed_warning("eval_001", 3.1e-3, True, 400, 2.0)
    assert high.startswith("warning: evaluation eval_001: error bar 3.1 mHa after 400 steps "
                           "(eval.max_steps), above eval.target_stderr_mha 2;"), high
    both = target_missed_warning("eval_002", 3.1e-3, False, 400, 2.0)
    assert "3.1 mHa (no reblocking plateau: a lower bound) after 400" in both
    assert "above eval.target_stderr_mha 2" in both
    assert all("\n" not in m for m in (low, high, both))
