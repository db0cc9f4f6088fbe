#!/bin/bash
# Shared by the vmc SLURM templates: run one `vmc run` job step, resume when the run
# directory already holds (part of) a run, and requeue the job when vmc stopped resumably.
#
#   vmc_step CONFIG OUT [extra vmc arguments ...]
#
# vmc exits 75 after writing a checkpoint when it receives SIGTERM/SIGINT/SIGUSR1 (SLURM's
# --signal warning, scancel --signal, preemption) or reaches run.max_minutes; the job is then
# requeued and the next start continues with --resume. Any other non-zero exit ends the job
# with that code (2: bad input, 3: diverged, 1: error) and nothing is requeued.
# VMC (default: vmc), SRUN (default: srun) and SCONTROL (default: scontrol) may be set to
# other commands, e.g. for a dry run.
vmc_step() {
  local config=${1:?config file} out=${2:?run directory}
  shift 2
  local resume=()
  # any of the files a run writes (vmc.precheck._RUN_FILES): a run stopped before its first
  # checkpoint (in pretraining or burn-in) has config.yaml and train.h5 but no checkpoint,
  # and `vmc run --resume` then starts it again from the beginning
  local f
  for f in config.yaml train.h5 checkpoints summary.json; do
    if [ -e "$out/$f" ]; then
      resume=(--resume)
    fi
  done
  echo "vmc_step: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $config -> $out ${resume[*]+${resume[*]}}"
  # srun forwards the --signal warning to every task; without exec, bash waits for it
  ${SRUN:-srun} --kill-on-bad-exit=1 ${VMC:-vmc} run "$config" --out "$out" ${resume[@]+"${resume[@]}"} "$@"
  local rc=$?
  if [ "$rc" -eq 75 ]; then
    echo "vmc_step: stopped resumably (exit 75): requeueing job ${SLURM_JOB_ID:-?}"
    ${SCONTROL:-scontrol} requeue "${SLURM_JOB_ID:?not inside a SLURM job}"
  fi
  return "$rc"
}
