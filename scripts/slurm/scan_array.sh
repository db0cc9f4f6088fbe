#!/bin/bash
# Potential-energy scan as a job array: task i runs geometry i of a list of config files.
#   ls runs/scan/configs/*.yaml | sort > runs/scan/list.txt      # one config per line, in order
#   sbatch --array=0-$(( $(wc -l < runs/scan/list.txt) - 1 )) scripts/slurm/scan_array.sh runs/scan/list.txt runs/scan
# Task i writes OUT/point_<i>. A fresh task warm-starts from its neighbour's (i-1) newest
# checkpoint when one exists (--init-from), and starts cold otherwise; a requeued task
# resumes its own run. For every point to start from a finished neighbour, run the array
# in order one task at a time (--array=0-N%1), or chain arrays with --dependency=aftercorr.
#SBATCH --job-name=vmc-scan
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=08:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
set -u
source "${SLURM_SUBMIT_DIR:-.}/scripts/slurm/common.sh"
list=${1:?file with one config path per line}; root=${2:?output folder}; shift 2
i=${SLURM_ARRAY_TASK_ID:?not an array task}
config=$(sed -n "$((i + 1))p" "$list")
[ -n "$config" ] || { echo "error: $list has no line $((i + 1))" >&2; exit 2; }
out="$root/point_$(printf %03d "$i")"
warm=()
prev="$root/point_$(printf %03d $((i - 1)))"
if [ "$i" -gt 0 ] && ! compgen -G "$out/checkpoints/ckpt_*.h5" > /dev/null \
   && compgen -G "$prev/checkpoints/ckpt_*.h5" > /dev/null; then
  warm=(--init-from "$prev")
fi
vmc_step "$config" "$out" ${warm[@]+"${warm[@]}"} "$@"  # (bash < 4.4 and set -u: empty arrays)
