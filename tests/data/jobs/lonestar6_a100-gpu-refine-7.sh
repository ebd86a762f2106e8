#!/bin/bash
# hpcxtal refine for campaign /scratch/campaign: one array task per 3 shards.
#SBATCH --job-name=hpcxtal-refine
#SBATCH --partition=gpu-a100
#SBATCH --account=DMR00000
#SBATCH --gpus-per-task=1
#SBATCH --time=12:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=3
#SBATCH --cpus-per-task=42
#SBATCH --array=0-2%4
#SBATCH --output=/scratch/campaign/jobs/logs/refine-%A_%a.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
module load gcc cuda python3
source $WORK/venvs/hpcxtal/bin/activate
export HDF5_USE_FILE_LOCKING=FALSE
set -u
export OMP_NUM_THREADS=42
# Task k runs shards 3k+1 .. 3k+3 of the shard file (unfinished shards only) at once,
# each on its own 42 cores and its own GPU.
GPUS=(0 1 2)
PIDS=()
for SLOT in $(seq 0 2); do
    SHARD=$(sed -n "$(( ${SLURM_ARRAY_TASK_ID} * 3 + SLOT + 1 ))p" /scratch/campaign/jobs/refine-shards.txt)
    [ -n "$SHARD" ] || break
    CPUS=$(( SLOT * 42 ))-$(( SLOT * 42 + 41 ))
    CUDA_VISIBLE_DEVICES=${GPUS[$SLOT]} hpcxtal refine /scratch/campaign --shard "$SHARD" &
    PIDS+=($!)
done
STATUS=0
for PID in "${PIDS[@]}"; do wait "$PID" || STATUS=1; done
exit $STATUS
