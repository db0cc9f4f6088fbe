"""Several processes on JAX's distributed runtime (127.0.0.1), against one process.

Two processes with 2 forced host devices each must give the run of one process with 4 devices
(float64, same seed; only the reduction order may differ), with every file written and every
line printed by process 0 alone; checkpoints move between the layouts; a lost peer or a
SIGTERM to one process ends both cleanly.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from helpers import cut_back_copy, host_devices_env
from vmc import checkpoint as ckpt, h5io

# one worker runs this module: its module fixtures are built once (pyproject: loadgroup)
pytestmark = pytest.mark.xdist_group("multiprocess")

ROOT = pathlib.Path(__file__).resolve().parents[1]
H2 = str(ROOT / "tests" / "data" / "h2_tiny.yaml")
COMMON = ["--preset", "tiny", "--set", "run.x64=true", "--set", "run.checkpoint_every=3",
          "--set", "eval.steps=16", "--set", "sampler.burn_in=2", "--set", "run.log_every=1"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**host_devices_env(devices), "VMC_CONNECT_SECONDS": "60",
            "VMC_HEARTBEAT_SECONDS": "10"}


def _launch(out, steps, processes, devices, extra=()):
    args = ["run", H2, "--out", str(out), *COMMON, "--set", f"optim.steps={steps}", *extra]
    if processes == 1:
        return [subprocess.Popen([sys.executable, "-m", "vmc.cli", *args], env=_env(devices),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    port = _port()
    return [subprocess.Popen([sys.executable, "-m", "vmc.cli", *args, "--coordinator",
                              f"127.0.0.1:{port}", "--num-processes", str(processes),
                              "--process-id", str(i)], env=_env(devices),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(processes)]


def _wait(procs, timeout=240):
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def _final_params(run):
    path = ckpt.list_checkpoints(run / "checkpoints")[-1]
    return ckpt.read_tree_raw(path, "params"), path


def _same_run(a, b, rtol=1e-10):
    sa, sb = h5io.read_stats(a / "train.h5"), h5io.read_stats(b / "train.h5")
    np.testing.assert_array_equal(sa["step"], sb["step"])
    np.testing.assert_allclose(sa["energy"], sb["energy"], rtol=rtol)
    np.testing.assert_allclose(sa["width"], sb["width"], rtol=rtol)
    pa, path_a = _final_params(a)
    pb, path_b = _final_params(b)
    assert path_a.name == path_b.name and pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=rtol, atol=1e-14, err_msg=k)
    with h5py.File(a / "eval.h5") as fa, h5py.File(b / "eval.h5") as fb:
        np.testing.assert_allclose(fa["eval_000/energy"][()], fb["eval_000/energy"][()],
                                   rtol=rtol)


_GLOO = re.compile(r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. "
                   r"Expected number of connected peer ranks is : ?\d*")


def own_lines(text: str) -> list:
    """The lines of a process's stdout other than Gloo's connection messages, which its
    threads can print interleaved (a message's final number then lands on a line of its
    own: left out too)."""
    rest = _GLOO.sub("", text)
    return [ln for ln in rest.splitlines() if ln.strip() and not ln.strip().isdigit()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, 4 devices, 6 steps (checkpoints at 3 and 6) and a 16-step evaluation."""
    out = tmp_path_factory.mktemp("mp") / "one"
    _wait(_launch(out, 6, 1, 4))
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The reference's run in two processes of 2 devices each: (run dir, (stdout, stderr)
    of each process)."""
    out = tmp_path_factory.mktemp("mp") / "two"
    return out, _wait(_launch(out, 6, 2, 2))


def test_two_processes_match_one_and_only_process_0_writes(reference, two):
    out, ((o0, e0), (o1, e1)) = two
    _same_run(reference, out)
    assert "step      6" in o0 and "energy" in o0
    assert own_lines(o1) == [], o1[-2000:]            # process 1 prints no vmc line
    assert "Traceback" not in e0 + e1
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [".lock", "checkpoints/ckpt_000003.h5", "checkpoints/ckpt_000006.h5",
                     "config.yaml", "eval.h5", "run.log", "summary.json", "train.h5"]
    # each train.h5 row was written once (a second writer would repeat or interleave rows)
    np.testing.assert_array_equal(h5io.read_stats(out / "train.h5")["step"], np.arange(6))


@pytest.mark.parametrize("first,then", [("one", (2, 2))])
def test_checkpoint_moves_between_layouts(reference, two, tmp_path, first, then):
    """The step-3 checkpoint of one layout's run (cut back to it, as a crash leaves a run),
    resumed in the other layout, finishes as the reference."""
    out = cut_back_copy(two[0] if first == "two" else reference, tmp_path / "run", 3)
    (o0, _), *_ = _wait(_launch(out, 6, *then, extra=["--resume"]))
    assert "resume: from ckpt_000003.h5 (step 3)" in o0
    _same_run(reference, out)


def test_lost_peer_ends_the_other_with_an_error_line(tmp_path):
    procs = _launch(tmp_path / "run", 100000, 2, 2)
    for line in procs[0].stdout:     # training has started on both
        if line.startswith("step"):
            break
    procs[1].kill()
    t0 = time.time()
    out, err = procs[0].communicate(timeout=90)
    procs[1].communicate()
    assert time.time() - t0 < 60
    assert procs[0].returncode not in (0, None)
    assert any(line.startswith("error: ") for line in err.splitlines()), err[-2000:]


def test_sigterm_to_one_process_checkpoints_both_at_one_step(tmp_path):
    out = tmp_path / "run"
    procs = _launch(out, 100000, 2, 2, extra=["--set", "run.checkpoint_every=100000"])
    for line in procs[0].stdout:
        if line.startswith("step      2"):
            break
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [75, 75], [e[-1500:] for _, e in outs]
    saved = ckpt.list_checkpoints(out / "checkpoints")
    assert len(saved) == 1
    step = ckpt.read_attrs(saved[0])["step"]
    assert f"stopping after step {step}" in outs[0][0]
    assert h5io.read_stats(out / "train.h5")["step"][-1] == step - 1
