#!/bin/bash
# SLURM batch template: train, checkpoint before the time limit, requeue, resume.
#   sbatch scripts/slurm_job.sh systems/LiH.yaml runs/LiH
#SBATCH --job-name=vmc
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@300          # SIGUSR1 five minutes before the limit
#SBATCH --requeue
#SBATCH --gres=gpu:1
set -u
config=${1:?config file}; out=${2:?run directory}
resume=""
[ -d "$out/checkpoints" ] && resume="--resume"
# exec-less so that bash forwards the signal to vmc, which checkpoints and exits with 75
vmc run "$config" --out "$out" $resume --set run.max_minutes=230 &
pid=$!
trap 'kill -USR1 $pid' USR1
wait $pid; rc=$?
[ $rc -eq 138 ] && { wait $pid; rc=$?; }   # wait was interrupted by the trapped signal
if [ $rc -eq 75 ]; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $rc
