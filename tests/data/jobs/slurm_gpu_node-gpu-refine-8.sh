#!/bin/bash
# hpcxtal refine for campaign /scratch/campaign: one array task per 4 shards.
#SBATCH --job-name=hpcxtal-refine
#SBATCH --partition=gpu
#SBATCH --account=my_allocation
#SBATCH --mem=262144M
#SBATCH --gpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=8
#SBATCH --array=0-1
#SBATCH --output=/scratch/campaign/jobs/logs/refine-%A_%a.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
module load cuda
source $HOME/venvs/hpcxtal/bin/activate
set -u
export OMP_NUM_THREADS=8
# Task k runs shards 4k+1 .. 4k+4 of the shard file (unfinished shards only) at once,
# each on its own 8 cores and its own GPU.
GPUS=(0 1 2 3)
PIDS=()
for SLOT in $(seq 0 3); do
    SHARD=$(sed -n "$(( ${SLURM_ARRAY_TASK_ID} * 4 + SLOT + 1 ))p" /scratch/campaign/jobs/refine-shards.txt)
    [ -n "$SHARD" ] || break
    CPUS=$(( SLOT * 8 ))-$(( SLOT * 8 + 7 ))
    CUDA_VISIBLE_DEVICES=${GPUS[$SLOT]} srun --exact --ntasks=1 --cpus-per-task=8 --gpus-per-task=1 hpcxtal refine /scratch/campaign --shard "$SHARD" &
    PIDS+=($!)
done
STATUS=0
for PID in "${PIDS[@]}"; do wait "$PID" || STATUS=1; done
exit $STATUS
