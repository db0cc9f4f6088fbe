"""Time one stats flush (20 rows of train.h5's columns) at 1e3 and 2e5 rows already written.

    python scripts/bench_flush.py [--reps 15] [--big 200000] [--old-reps 5]

In one process, side by side (the two sizes alternate), `vmc.h5io.StatsWriter.flush` of 20
rows is timed on a file holding 1e3 rows and on one holding `--big` rows; the table gives
medians and maxima over `--reps` flushes and the ratio big/small of the medians (goal:
<= 2). For comparison, the previous scheme (copy the file, append in the copy, rename it
over the original; a private copy of its code is below) is timed at the same sizes. Last,
the amortized cost of a whole run of 2e4 rows (flushes plus the capacity rebuilds at
1024, 2048, ... rows) is given per flush.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import h5py
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vmc.h5io import StatsWriter  # noqa: E402

# train.h5's columns (vmc.loop._row: step, the StepStats fields, rejected, step_time)
COLUMNS = ("step", "energy", "variance", "median", "clip_fraction", "pmove", "width", "lr",
           "update_norm", "constraint_scale", "iterations", "residual", "bad_walkers",
           "rejected", "step_time")


def _columns() -> tuple[str, ...]:
    try:
        from vmc.train import StepStats
        return ("step", *StepStats._fields, "rejected", "step_time")
    except Exception:  # noqa: BLE001 - the benchmark only needs realistic names
        return COLUMNS


def _rows(cols, start, n):
    return [{k: (i if k == "step" else 0.001 * i) for k in cols} for i in range(start, start + n)]


# ------------------------------------------------- the previous scheme (copy and rename)
def _old_flush(path: pathlib.Path, rows, keys, group="stats"):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            g = f.require_group(group)
            for k in keys:
                col = np.array([r[k] for r in rows], dtype=np.int64 if k == "step" else np.float64)
                if k not in g:
                    g.create_dataset(k, data=col, maxshape=(None,), chunks=(1024,))
                else:
                    d = g[k]
                    n = d.shape[0]
                    d.resize((n + len(col),))
                    d[n:] = col
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--big", type=int, default=200_000)
    ap.add_argument("--old-reps", type=int, default=5)
    args = ap.parse_args(argv)
    cols = _columns()
    d = pathlib.Path(tempfile.mkdtemp(prefix="bench_flush_"))
    sizes = (1000, args.big)
    try:
        writers, old, nxt = {}, {}, {}
        for n in sizes:
            w = StatsWriter(d / f"new{n}.h5", flush_every=10**9)
            for i, r in enumerate(_rows(cols, 0, n)):
                w.append(r)
                if i + 1 == min(n, 2 ** 17):  # grown as a run grows it: 262,144-row capacity
                    w.flush()
            w.flush()
            writers[n], nxt[n] = w, n
            p = d / f"old{n}.h5"
            for lo in range(0, n, 50_000):
                _old_flush(p, _rows(cols, lo, min(50_000, n - lo)), cols)
            old[n] = p
        t_new = {n: [] for n in sizes}
        for _ in range(args.reps):
            for n in sizes:
                w = writers[n]
                for r in _rows(cols, nxt[n], 20):
                    w.append(r)
                nxt[n] += 20
                t_new[n].append(_timed(w.flush))
        t_old = {n: [] for n in sizes}
        for _ in range(args.old_reps):
            for n in sizes:
                start = int(h5py.File(old[n], "r")["stats/step"].shape[0])
                t_old[n].append(_timed(lambda: _old_flush(old[n], _rows(cols, start, 20), cols)))
        for n in sizes:
            with h5py.File(writers[n].path, "r") as f:
                assert f["stats/step"].shape == (nxt[n],), "rows lost"
        size_mb = {n: writers[n].path.stat().st_size / 2**20 for n in sizes}
        print(f"one flush of 20 rows x {len(cols)} columns; medians (max) over "
              f"{args.reps} flushes, old scheme over {args.old_reps}")
        print("| rows in file | file (MB, with spare capacity) | in place (ms) | "
              "copy and rename, old (ms) |")
        print("|---|---|---|---|")
        for n in sizes:
            print(f"| {n:,} | {size_mb[n]:.1f} | {1e3 * statistics.median(t_new[n]):.2f} "
                  f"({1e3 * max(t_new[n]):.2f}) | {1e3 * statistics.median(t_old[n]):.2f} "
                  f"({1e3 * max(t_old[n]):.2f}) |")
        small, big = (statistics.median(t_new[n]) for n in sizes)
        osmall, obig = (statistics.median(t_old[n]) for n in sizes)
        print(f"ratio {args.big:,} / 1,000 rows: in place {big / small:.2f} (goal <= 2), "
              f"old {obig / osmall:.1f}")
        # amortized: a run of 2e4 rows from an empty file, rebuilds included
        w = StatsWriter(d / "run.h5", flush_every=20)
        rows = _rows(cols, 0, 20_000)
        t = time.perf_counter()
        for r in rows:
            w.append(r)
        w.close()
        total = time.perf_counter() - t
        print(f"a run of 20,000 rows from an empty file ({len(rows) // 20} flushes, rebuilds "
              f"at 1024 .. 16384 rows included): {1e3 * total / (len(rows) // 20):.2f} ms "
              f"per flush, {total:.2f} s in all")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
