"""Stats and eval HDF5 files: round trips, resume/truncate, in-place appends, SIGKILL safety,
readers of a live file, and the ownership rules of temporary files."""

import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from vmc import _tempfiles
from vmc.h5io import StatsWriter, next_group_name, read_stats, write_group

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _row(step, n_cols=3):
    return {"step": step, **{f"c{j}": step * 0.5 + j for j in range(n_cols)}}


def _env(**kw):
    e = {k: v for k, v in os.environ.items() if k != "VMC_TEST_KILL"}
    return {**e, "PYTHONPATH": str(_REPO), **kw}


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
    with h5py.File(p, "r") as f:  # what users read: exactly the rows, no padding
        assert f["stats/c0"].shape == (7,) and f["stats/c0"].maxshape == (None,)
        np.testing.assert_array_equal(f["stats/c0"][:], np.arange(7) * 0.5)
        assert f["stats/c0"].id.get_num_chunks() == 1 and f["stats/c0"].chunks == (1024,)


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


def test_new_column_on_fresh_file_and_on_resume_of_an_older_run(tmp_path):
    p = tmp_path / "train.h5"
    with StatsWriter(p, group="pretrain") as w:  # another group already in the file
        w.append({"step": 0, "loss": 2.0})
    with StatsWriter(p) as w:  # a column no earlier version wrote: fine on a fresh group
        for i in range(3):
            w.append({**_row(i), "bad_walkers": float(i)})
    assert read_stats(p)["bad_walkers"].tolist() == [0.0, 1.0, 2.0]
    assert read_stats(p, "pretrain")["loss"].tolist() == [2.0]
    w = StatsWriter(p)  # resumed: the columns come from the file
    assert w.keys == ("bad_walkers", "c0", "c1", "c2", "step")
    # a column added by a newer version: the older rows read NaN there
    w.append({**_row(3), "bad_walkers": 0.0, "nonfinite": 1.0})
    w.close()
    s = read_stats(p)
    assert s["step"].tolist() == [0, 1, 2, 3]
    assert np.isnan(s["nonfinite"][:3]).all() and s["nonfinite"][3] == 1.0
    assert read_stats(p, "pretrain")["loss"].tolist() == [2.0]
    w = StatsWriter(p)  # a row missing a column of the file is still refused
    with pytest.raises(ValueError, match="missing \\['nonfinite'\\].*/stats in"):
        w.append({**_row(4), "bad_walkers": 0.0})


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
    with h5py.File(p, "r") as f:  # cut in place: still one chunk, exactly the rows
        assert f["stats/c1"].shape == (7,) and f["stats/c1"].id.get_num_chunks() == 1
    w = StatsWriter(p)
    w.truncate(-1)  # resume before the first step: no rows, no group
    with h5py.File(p, "r") as f:
        assert "stats" not in f
    with pytest.raises(KeyError, match="nogroup"):
        read_stats(p, group="nogroup")
    w.append(_row(0))
    w.close()
    assert read_stats(p)["step"].tolist() == [0]


def test_capacity_doubles_and_every_row_is_kept(tmp_path):
    p = tmp_path / "train.h5"
    w = StatsWriter(p, flush_every=20)
    for i in range(5000):
        w.append(_row(i, n_cols=14))
    w.close()
    np.testing.assert_array_equal(read_stats(p)["step"], np.arange(5000))
    with h5py.File(p, "r") as f:
        for d in f["stats"].values():
            assert d.shape == (5000,) and d.chunks == (8192,) and d.id.get_num_chunks() == 1


def test_older_layout_is_migrated_on_the_first_flush(tmp_path):
    p = tmp_path / "train.h5"
    with h5py.File(p, "w") as f:  # what earlier versions wrote: 1024-row chunks
        for k in ("step", "energy"):
            f.create_dataset(f"stats/{k}", data=np.arange(3000, dtype=np.int64 if k == "step"
                                                           else np.float64),
                             maxshape=(None,), chunks=(1024,))
        f.create_dataset("pretrain/loss", data=np.ones(5))
    w = StatsWriter(p)
    w.truncate(2499)
    w.append({"step": 2500, "energy": 0.5})
    w.close()
    s = read_stats(p)
    np.testing.assert_array_equal(s["step"], np.arange(2501))
    assert s["energy"][-1] == 0.5 and s["energy"][7] == 7.0
    with h5py.File(p, "r") as f:
        assert f["stats/energy"].id.get_num_chunks() == 1
        np.testing.assert_array_equal(f["pretrain/loss"][()], np.ones(5))


def _u64(n):
    return struct.pack("<Q", n)


def test_a_flush_writes_only_new_rows_and_the_lengths(tmp_path):
    """The property the crash safety rests on, checked on the bytes: a flush changes only
    (a) the bytes of the new rows, past every column's old end, and (b) each column's
    8-byte length; the file does not grow (nothing is allocated)."""
    p = tmp_path / "train.h5"
    w = StatsWriter(p, flush_every=10**9)
    for i in range(1000):
        w.append(_row(i, n_cols=14))
    w.flush()
    before = p.read_bytes()
    for i in range(1000, 1020):
        w.append(_row(i, n_cols=14))
    w.flush()
    after = p.read_bytes()
    assert len(after) == len(before)
    with h5py.File(p, "r") as f:
        chunks = [d.id.get_chunk_info(0).byte_offset for d in f["stats"].values()]
    new_rows = [(o + 8 * 1000, o + 8 * 1020) for o in chunks]
    lengths = [i for i in range(len(before) - 7)
               if before[i:i + 8] == _u64(1000) and after[i:i + 8] == _u64(1020)]
    assert len(lengths) >= len(chunks)  # one dataspace per column
    a, b = np.frombuffer(before, np.uint8), np.frombuffer(after, np.uint8)
    for i in np.flatnonzero(a != b):
        assert (any(lo <= i < hi for lo, hi in new_rows)
                or any(o <= i < o + 8 for o in lengths)), f"byte {i} changed"


def test_every_partial_flush_state_reads_back(tmp_path):
    """HDF5 writes a flush's raw data before the lengths (seen with strace, and what
    the kill tests below exercise); every mix of old and new lengths on top of the new
    data is a file that plain h5py reads, each column at its old or its new length."""
    p = tmp_path / "train.h5"
    w = StatsWriter(p, flush_every=10**9)
    for i in range(40):
        w.append(_row(i, n_cols=4))
    w.flush()
    before = bytearray(p.read_bytes())
    for i in range(40, 60):
        w.append(_row(i, n_cols=4))
    w.flush()
    after = bytes(p.read_bytes())
    lengths = [i for i in range(len(before) - 7)
               if before[i:i + 8] == _u64(40) and after[i:i + 8] == _u64(60)]
    rng = np.random.default_rng(0)
    state = bytearray(after)
    for trial in range(12):
        keep_old = rng.random(len(lengths)) < 0.5
        for i, old in zip(lengths, keep_old):
            state[i:i + 8] = _u64(40) if old else _u64(60)
        q = tmp_path / f"state{trial}.h5"
        q.write_bytes(bytes(state))
        with h5py.File(q, "r") as f:
            for k, d in f["stats"].items():
                n = d.shape[0]
                assert n in (40, 60)
                want = np.arange(n) if k == "step" else np.arange(n) * 0.5 + int(k[1:])
                np.testing.assert_array_equal(d[()], want)
        s = read_stats(q)
        assert len(s["step"]) in (40, 60) and len({len(v) for v in s.values()}) == 1


_APPENDER = textwrap.dedent("""
    import sys
    import numpy as np
    from vmc.h5io import StatsWriter, next_group_name, read_stats, write_group
    p, rows = sys.argv[1], int(sys.argv[2])
    e = sys.argv[3] if len(sys.argv) > 3 else None  # eval file: a group every 500 rows
    try:
        step = int(read_stats(p)["step"][-1]) + 1
    except (FileNotFoundError, KeyError):
        step = 0
    w = StatsWriter(p, flush_every=5)
    w.truncate(step - 1)
    print("ready", flush=True)
    while step < rows:
        w.append({"step": step, **{f"c{j}": step + j for j in range(14)}})
        if e and step % 500 == 0:
            write_group(e, next_group_name(e), {"x": np.full(100, step)}, {"step": step})
        step += 1
    w.close()
""")


def _check_rows(p, live=False, whole_flushes=5):
    """Rows read back are whole flushes of correct values, through read_stats and plain
    h5py (default locking); columns differ by at most the one flush a kill interrupted."""
    s = read_stats(p)
    n = len(s["step"])
    assert all(len(v) == n for v in s.values())
    np.testing.assert_array_equal(s["step"], np.arange(n))  # monotone, no gaps
    np.testing.assert_array_equal(s["c3"], np.arange(n) + 3.0)
    assert n % whole_flushes == 0  # only whole flushes
    for attempt in range(200):   # HDF5's own lock: a plain open during a flush is refused
        try:                       # (BlockingIOError), as for any h5py user; try again
            f = h5py.File(p, "r")
            break
        except BlockingIOError:
            assert live and attempt < 199
            time.sleep(0.005)
    with f:
        lens = {k: d.shape[0] for k, d in f["stats"].items()}
        for k, d in f["stats"].items():
            j = 0 if k == "step" else int(k[1:])
            np.testing.assert_array_equal(d[()], np.arange(lens[k]) + j)
    assert all(v % whole_flushes == 0 for v in lens.values())
    if not live:  # (a live file grows while h5py opens one column after another)
        assert min(lens.values()) == n and max(lens.values()) - n in (0, whole_flushes)
    return n


def test_kill_switch_mid_flush_in_place_and_mid_rebuild(tmp_path):
    p = tmp_path / "train.h5"
    run = lambda kill, rows: subprocess.run(  # noqa: E731
        [sys.executable, "-c", _APPENDER, str(p), str(rows)], capture_output=True,
        env=_env(VMC_TEST_KILL=kill), timeout=60)
    # first flush of a fresh file is a rebuild: killed before the rename
    assert run("stats_flush@1", 100).returncode == -signal.SIGKILL
    assert not p.exists() and len(list(tmp_path.glob(".train.h5.*.tmp"))) == 1
    # third flush is in place: killed with half the columns written
    assert run("stats_flush@3", 100).returncode == -signal.SIGKILL
    assert not list(tmp_path.glob(".*.tmp"))  # the writer removed the dead one's temp
    with h5py.File(p, "r") as f:
        lens = sorted({d.shape[0] for d in f["stats"].values()})
    assert lens == [10, 15]  # the kill really landed inside the flush
    assert _check_rows(p) == 10
    assert run("", 300).returncode == 0
    assert _check_rows(p) == 300


def test_files_stay_readable_after_sigkill_at_random_moments(tmp_path):
    p, e = tmp_path / "train.h5", tmp_path / "eval.h5"
    with StatsWriter(p) as w:  # start just below the first capacity: kills cross rebuilds
        for i in range(1000):
            w.append({"step": i, **{f"c{j}": i + j for j in range(14)}})
    rng = np.random.default_rng(1234)
    n_rows = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(p), str(10**7), str(e)],
                                stdout=subprocess.PIPE, text=True, env=_env())
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        n_rows.append(_check_rows(p))
        if e.exists():
            with h5py.File(e, "r") as f:
                for g in f.values():
                    assert g["x"].shape == (100,) and g["x"][0] == g.attrs["step"]
    assert n_rows[-1] > 1024 and n_rows[-1] > n_rows[0] >= 1000  # grew through a rebuild
    StatsWriter(p)  # removes temps left by killed writers
    write_group(e, next_group_name(e), {}, {})
    assert not list(tmp_path.glob(".*.tmp"))


def test_readers_see_whole_rows_while_another_process_appends(tmp_path):
    p = tmp_path / "train.h5"
    proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(p), "3000"],
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = []
        while proc.poll() is None or not seen:
            if p.exists():
                seen.append(_check_rows(p, live=True))
            time.sleep(0.005)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.stdout.close()
    assert seen == sorted(seen) and len(set(seen)) >= 5  # many distinct states read
    assert _check_rows(p) == 3000  # through two rebuilds (1024, 2048 rows)


_HOLDER = textwrap.dedent("""
    import sys, time
    from vmc._tempfiles import locked_temp
    with locked_temp(sys.argv[1]) as tmp:
        open(tmp, "wb").write(b"partial")
        print(tmp, flush=True)
        time.sleep(60)
""")


def test_temp_files_are_removed_only_when_abandoned(tmp_path):
    live = tmp_path / "train.h5"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(live)],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        held = pathlib.Path(holder.stdout.readline().strip())
        old = time.time() - 2 * _tempfiles.TEMP_GRACE_S
        os.utime(held, (old, old))
        host = _tempfiles._host()
        other_young = tmp_path / f".train.h5.otherhost.{os.getpid()}.aaaa0000.tmp"
        other_old = tmp_path / f".train.h5.otherhost.1.bbbb0000.tmp"
        mine = tmp_path / f".train.h5.{host}.{os.getpid()}.cccc0000.tmp"
        for t in (other_young, other_old, mine):
            t.write_bytes(b"x")
        os.utime(other_old, (old, old))
        removed = _tempfiles.remove_stale_temps(live)
        # a live writer's lock protects its file however old; a young foreign one is kept
        assert held.exists() and other_young.exists()
        assert sorted(removed) == sorted([other_old, mine])
        holder.kill()
        holder.wait()
        assert _tempfiles.remove_stale_temps(live) == [held]  # its writer died
    finally:
        holder.kill()
        holder.stdout.close()
    assert socket.gethostname()  # the host part of the names comes from here


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
