#!/bin/bash
# One node, k GPUs, one process: the walkers are sharded over the node's GPUs.
#   sbatch --gpus-per-node=4 scripts/slurm/single_node.sh systems/N2.yaml runs/N2 [--set ...]
# Submit from the repository root (the job starts there). Requeues itself on preemption
# and near the time limit (SIGUSR1 five minutes ahead), then resumes from its checkpoint.
#SBATCH --job-name=vmc
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -u
source "${SLURM_SUBMIT_DIR:-.}/scripts/slurm/common.sh"
config=${1:?config file}; out=${2:?run directory}; shift 2
vmc_step "$config" "$out" "$@"
