#!/bin/bash
# Several nodes, one process per node, each with all its GPUs: JAX's distributed runtime
# starts from SLURM's variables (coordinator: the first node of the step, port from the job
# id); walkers are sharded over every GPU of every node and process 0 writes the run.
#   sbatch --nodes=4 --gpus-per-node=8 scripts/slurm/multi_node.sh systems/CO.yaml runs/CO
# The run directory must be on a filesystem every node sees. sampler.walkers must be
# divisible by the total GPU count. A node that dies ends the others within
# run.heartbeat_seconds (30 s) with an error line; the job is not requeued then.
#SBATCH --job-name=vmc-mn
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -u
source "${SLURM_SUBMIT_DIR:-.}/scripts/slurm/common.sh"
config=${1:?config file}; out=${2:?run directory}; shift 2
vmc_step "$config" "$out" "$@"
