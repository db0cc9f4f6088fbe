"""A small kill/resume soak through `vmc run` (the full one is scripts/kill_resume.py).

Two SIGKILLs at seeded random moments (training, evaluation; a kill during start-up is in
the full soak), one kill injected
inside a stats flush and one after a checkpoint's temp file is written, each followed by
`--resume`; then the run must finish with train.h5 holding steps 0..59 exactly once, every
HDF5 file readable and every checkpoint finite.
"""

import importlib.util
import pathlib
import signal

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "scripts" / "kill_resume.py")
kr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kr)

STEPS = 60


def test_run_survives_kills_and_resumes(tmp_path):
    rng = np.random.default_rng(7)
    out, env = tmp_path / "run", kr.child_env()
    plan = [("stats_flush@2", None, 0.0),             # 2nd flush (step 40): in place, mid-columns
            (None, f"step {10 * rng.integers(1, 5)}", rng.uniform(0.0, 0.01)),  # mid-steps
            ("checkpoint_write@1", None, 0.0),        # temp complete, not renamed
            (None, "evaluation", rng.uniform(0.0, 1.0))]
    landed = []
    for inject, target, delay in plan:
        e = dict(env, **({"VMC_TEST_KILL": inject} if inject else {}))
        r = kr.run_once(out, STEPS, e, target, delay, timeout=300, pretrain=0)
        assert r["rc"] in (-signal.SIGKILL, 75), "\n".join(r["tail"])
        landed.append(r["phase"])
    assert landed[0] == "training steps"   # the flush at step 40
    # (a kill late in training can land in the final checkpoint, labelled evaluation)
    assert {landed[1], landed[2]} <= {"training steps", "evaluation"}
    final = kr.run_once(out, STEPS, env, timeout=300, pretrain=0)
    assert final["rc"] == 0, "\n".join(final["tail"])
    assert kr.verify(out, STEPS, pretrain=0) == []
