"""scripts/bench_optimizers.py: the equal-wall-time cut and the clean-timing rescale."""

import importlib.util
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "bench_optimizers.py"
_spec = importlib.util.spec_from_file_location("bench_optimizers", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_error_at_wall_time_averages_the_window_ending_at_the_budget():
    exact = bench.EXACT_LI
    energy = exact + 1e-3 * np.arange(1.0, 301.0)          # error k mHa at step k
    elapsed = bench._elapsed(np.full(300, 0.5))              # 0.5 s a step
    # 100 s = 200 steps: the mean error of steps 101..200 is 150.5 mHa
    assert bench.error_at_wall_time(energy, elapsed, 100.0) == pytest.approx(150.5)
    # a budget beyond the run takes its last 100 steps
    assert bench.error_at_wall_time(energy, elapsed, 1e6) == pytest.approx(250.5)
    # the first (compiling) step counts at the median, not at its own time
    slow_first = np.full(300, 0.5)
    slow_first[0] = 60.0
    np.testing.assert_allclose(bench._elapsed(slow_first), elapsed)


def test_retime_scales_by_the_clean_runs_matching_steps():
    own = np.r_[30.0, np.full(9, 2.0), np.full(90, 1.0)]   # slow early steps (CG at its cap)
    r = {"step_s": 1.0, "_step_time": own, "_elapsed": bench._elapsed(own)}
    clean = {"_step_time": np.r_[20.0, np.full(9, 0.5)]}    # the same 10 steps, 4x faster
    bench._retime(r, clean)
    assert r["step_s"] == pytest.approx(0.25)               # median of the whole run / 4
    np.testing.assert_allclose(r["_elapsed"], bench._elapsed(own) / 4)
    r = {"step_s": 1.0, "_step_time": own, "_elapsed": bench._elapsed(own)}
    bench._retime(r, None)            # the clean run failed: no step time to report
    assert r["step_s"] is None
    np.testing.assert_allclose(r["_elapsed"], bench._elapsed(own))


_STEP_PATH = _PATH.parent / "bench_step.py"
_step_spec = importlib.util.spec_from_file_location("bench_step", _STEP_PATH)
bench_step = importlib.util.module_from_spec(_step_spec)
_step_spec.loader.exec_module(bench_step)


def test_bench_step_children_import_the_exported_commit_not_this_checkout(tmp_path):
    # an export of HEAD: its children must import tmp_path/base/vmc, although this
    # checkout's vmc is installed (editable) and would win from the checkout's folder
    base = bench_step.export("HEAD", tmp_path / "base")
    assert (base / "systems" / "Li.yaml").is_file()
    assert bench_step.imported_vmc(base) == (base / "vmc").resolve()
    assert bench_step.imported_vmc(bench_step.ROOT) == (bench_step.ROOT / "vmc").resolve()
    # a folder without vmc: the child imports the installed checkout, and the guard stops
    with pytest.raises(SystemExit, match="imports"):
        bench_step.imported_vmc(tmp_path)
