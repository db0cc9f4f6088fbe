"""Stats and eval HDF5 files: round trips, resume/truncate, cost, and SIGKILL safety."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from vmc.h5io import StatsWriter, next_group_name, read_stats, write_group

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _row(step, n_cols=3):
    return {"step": step, **{f"c{j}": step * 0.5 + j for j in range(n_cols)}}


def test_append_buffers_and_flushes_every_n(tmp_path):
    p = tmp_path / "train.h5"
    w = StatsWriter(p, flush_every=3)
    for i in range(7):
        w.append(_row(i))
    assert read_stats(p)["step"].tolist() == [0, 1, 2, 3, 4, 5]  # 7th row still buffered
    w.close()
    s = read_stats(p)
    assert s["step"].tolist() == list(range(7))
    assert s["step"].dtype == np.int64 and s["c1"].dtype == np.float64
    np.testing.assert_array_equal(s["c2"], np.arange(7) * 0.5 + 2)
    with h5py.File(p, "r") as f:
        assert f["stats/c0"].maxshape == (None,) and f["stats/c0"].chunks is not None


def test_row_keys_are_fixed_and_values_scalar(tmp_path):
    w = StatsWriter(tmp_path / "t.h5")
    w.append({"step": 0, "energy": -1.0})
    with pytest.raises(ValueError, match="missing \\['energy'\\], unexpected \\['e'\\]"):
        w.append({"step": 1, "e": -1.0})
    with pytest.raises(ValueError, match="scalar"):
        w.append({"step": 1, "energy": np.ones(2)})
    with pytest.raises(ValueError, match="flush_every"):
        StatsWriter(tmp_path / "u.h5", flush_every=0)
    with pytest.raises(FileNotFoundError):
        read_stats(tmp_path / "absent.h5")


def test_resume_truncate_and_continue(tmp_path):
    p = tmp_path / "train.h5"
    with StatsWriter(p, flush_every=4) as w:
        for i in range(10):
            w.append(_row(i))
    w = StatsWriter(p, flush_every=4)  # resume after a checkpoint at step 4
    with pytest.raises(ValueError, match="keys changed"):  # keys come from the file
        w.append({"step": 10, "other": 1.0})
    w.truncate(4)
    assert read_stats(p)["step"].tolist() == [0, 1, 2, 3, 4]
    for i in range(5, 8):
        w.append(_row(i))
    w.truncate(6)  # also drops buffered rows past the step
    w.close()
    s = read_stats(p)
    assert s["step"].tolist() == list(range(7))
    np.testing.assert_array_equal(s["c0"], np.arange(7) * 0.5)
    with pytest.raises(KeyError, match="nogroup"):
        read_stats(p, group="nogroup")


def test_write_group_and_next_group_name(tmp_path):
    p = tmp_path / "eval.h5"
    assert next_group_name(p) == "eval_000"
    write_group(p, next_group_name(p), {"energy": np.arange(5.0)}, {"step": 10, "kind": "x"})
    write_group(p, next_group_name(p), {"energy": np.ones((2, 3), np.float32)}, {"step": 20})
    assert next_group_name(p) == "eval_002"
    with pytest.raises(ValueError, match="eval_001"):
        write_group(p, "eval_001", {}, {})
    with h5py.File(p, "r") as f:
        assert sorted(f) == ["eval_000", "eval_001"]
        np.testing.assert_array_equal(f["eval_000/energy"][()], np.arange(5.0))
        assert f["eval_000"].attrs["kind"] == "x" and f["eval_001"].attrs["step"] == 20
        assert f["eval_001/energy"].dtype == np.float32
    write_group(p, "eval_999", {}, {})
    assert next_group_name(p) == "eval_1000"
    assert not list(tmp_path.glob(".*.tmp"))


def test_repeated_flushes_of_a_10k_row_file_keep_every_row(tmp_path):
    # The cost of a flush (copy and replace, a few ms at this size) is a benchmark matter,
    # not asserted here; this checks that many flushes append exactly once each.
    p = tmp_path / "train.h5"
    w = StatsWriter(p, flush_every=10**9)
    for i in range(10_000):
        w.append(_row(i, n_cols=14))
    w.flush()
    for i in range(10):
        for j in range(20):
            w.append(_row(10_000 + 20 * i + j, n_cols=14))
        w.flush()
    np.testing.assert_array_equal(read_stats(p)["step"], np.arange(10_200))


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from vmc.h5io import StatsWriter, next_group_name, read_stats, write_group
    p, e = sys.argv[1], sys.argv[2]
    try:
        step = int(read_stats(p)["step"][-1]) + 1
    except (FileNotFoundError, KeyError):
        step = 0
    w = StatsWriter(p, flush_every=5)
    print("ready", flush=True)
    while True:
        w.append({"step": step, **{f"c{j}": step + j for j in range(14)}})
        if step % 20 == 0:
            write_group(e, next_group_name(e), {"x": np.full(100, step)}, {"step": step})
        step += 1
""")


def test_files_stay_readable_after_sigkill_at_random_moments(tmp_path):
    p, e = tmp_path / "train.h5", tmp_path / "eval.h5"
    rng = np.random.default_rng(1234)
    n_rows, mid_write = [], 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(p), str(e), str(_REPO)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        mid_write += bool(list(tmp_path.glob(".*.tmp")))  # killed during a flush
        s = read_stats(p)
        n = len(s["step"])
        assert all(len(v) == n for v in s.values())
        np.testing.assert_array_equal(s["step"], np.arange(n))  # monotone, no gaps
        np.testing.assert_array_equal(s["c3"], np.arange(n) + 3.0)
        assert n % 5 == 0  # only whole flushes
        n_rows.append(n)
        with h5py.File(e, "r") as f:
            for name, g in f.items():
                assert g["x"].shape == (100,) and g["x"][0] == g.attrs["step"]
    assert n_rows[-1] > n_rows[0] > 0
    assert mid_write >= 1  # at least one kill hit a write (most do: the loop is all flushes)
    StatsWriter(p)  # cleans temps left by killed writers
    write_group(e, next_group_name(e), {}, {})
    assert not list(tmp_path.glob(".*.tmp"))
