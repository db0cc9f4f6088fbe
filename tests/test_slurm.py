"""The SLURM templates: syntax, a dry run in a fake SLURM environment (initialize arguments,
resume and requeue paths), and the start-up errors of a multi-process launch."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SLURM = ROOT / "scripts" / "slurm"
TEMPLATES = ["single_node.sh", "multi_node.sh", "scan_array.sh", "common.sh"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_parse(name):
    proc = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _fake_tools(tmp_path, vmc_exit):
    """srun runs its command; scontrol and vmc log their arguments; vmc also records what
    `vmc launch-info` resolves from the task's environment and exits with vmc_exit."""
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/bash\n"
                                  "while [[ $1 == --* ]]; do shift; done\n"
                                  "exec \"$@\"\n")
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho \"scontrol $*\" >> {log}\n")
    (bin_dir / "fake-vmc").write_text(
        "#!/bin/bash\n"
        f"echo \"vmc $*\" >> {log}\n"
        f"{sys.executable} -m vmc.cli launch-info >> {log}\n"
        f"exit {vmc_exit}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


def _slurm_env(bin_dir, **extra):
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VMC": "fake-vmc",
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "gpu[017-018]",
           "JAX_PLATFORMS": "cpu", **extra}
    env.pop("VMC_COORDINATOR", None)
    return env


def test_multi_node_dry_run_initializes_from_slurm_and_requeues_on_75(tmp_path):
    bin_dir, log = _fake_tools(tmp_path, vmc_exit=75)
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(SLURM / "multi_node.sh"), "systems/He.yaml", str(out),
                           "--set", "optim.steps=10"], cwd=ROOT, env=_slurm_env(bin_dir),
                          capture_output=True, text=True)
    assert proc.returncode == 75, proc.stdout + proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == f"vmc run systems/He.yaml --out {out} --set optim.steps=10"
    plan = json.loads(lines[1])
    assert plan == {"source": "slurm", "coordinator_address": f"gpu017:{4242 % 4096 + 61440}",
                    "num_processes": 2, "process_id": 1}
    assert lines[2] == "scontrol requeue 4242"


def test_single_node_resumes_when_checkpoints_exist_and_does_not_requeue_errors(tmp_path):
    bin_dir, log = _fake_tools(tmp_path, vmc_exit=3)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "ckpt_000500.h5").write_bytes(b"")
    env = _slurm_env(bin_dir, SLURM_NTASKS="1")
    proc = subprocess.run(["bash", str(SLURM / "single_node.sh"), "systems/He.yaml", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 3
    lines = log.read_text().splitlines()
    assert lines[0] == f"vmc run systems/He.yaml --out {out} --resume"
    assert json.loads(lines[1])["source"] == "single"
    assert not any(line.startswith("scontrol") for line in lines)


@pytest.mark.parametrize("files", [("config.yaml", "train.h5"), ("train.h5",)])
def test_requeue_before_the_first_checkpoint_resumes(tmp_path, files):
    """A run stopped in pretraining or burn-in has written config.yaml and train.h5 but no
    checkpoint; `vmc run` without --resume would refuse the directory, so the requeued start
    must pass --resume (which starts such a run again)."""
    bin_dir, log = _fake_tools(tmp_path, vmc_exit=0)
    out = tmp_path / "run"
    out.mkdir()
    for name in files:
        (out / name).write_bytes(b"")
    env = _slurm_env(bin_dir, SLURM_NTASKS="1", SLURM_RESTART_COUNT="1")
    proc = subprocess.run(["bash", str(SLURM / "single_node.sh"), "systems/He.yaml", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log.read_text().splitlines()[0] == f"vmc run systems/He.yaml --out {out} --resume"


def _scan_task_1(tmp_path, own_files=()):
    """scan_array.sh as array task 1 of a two-line list, point_000 holding a checkpoint and
    point_001 the given files; returns the `vmc run` line it called."""
    bin_dir, log = _fake_tools(tmp_path, vmc_exit=0)
    (tmp_path / "list.txt").write_text("a.yaml\nb.yaml\n")
    prev = tmp_path / "scan" / "point_000" / "checkpoints"
    prev.mkdir(parents=True)
    (prev / "ckpt_001000.h5").write_bytes(b"")
    own = tmp_path / "scan" / "point_001"
    own.mkdir()
    for name in own_files:
        (own / name).write_bytes(b"")
    env = _slurm_env(bin_dir, SLURM_NTASKS="1", SLURM_ARRAY_TASK_ID="1")
    proc = subprocess.run(["bash", str(SLURM / "scan_array.sh"), str(tmp_path / "list.txt"),
                           str(tmp_path / "scan")], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()[0]


def test_scan_array_requeued_before_its_first_checkpoint_warm_starts_again(tmp_path):
    first = _scan_task_1(tmp_path, own_files=("config.yaml",))
    assert first == (f"vmc run b.yaml --out {tmp_path}/scan/point_001 --resume --init-from "
                     f"{tmp_path}/scan/point_000")


def test_scan_array_warm_starts_from_the_neighbour(tmp_path):
    first = _scan_task_1(tmp_path)
    assert first == (f"vmc run b.yaml --out {tmp_path}/scan/point_001 --init-from "
                     f"{tmp_path}/scan/point_000")


def test_bad_launch_flags_exit_2_and_unreachable_coordinator_exits_1_with_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "VMC_CONNECT_SECONDS": "3"}
    bad = subprocess.run([sys.executable, "-m", "vmc.cli", "launch-info", "--coordinator",
                          "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --process-id 2")
    proc = subprocess.run([sys.executable, "-m", "vmc.cli", "run",
                           str(ROOT / "tests" / "data" / "h2_tiny.yaml"), "--out",
                           str(tmp_path / "run"), "--preset", "tiny", "--coordinator",
                           "127.0.0.1:9", "--num-processes", "2", "--process-id", "1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "127.0.0.1:9" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()
