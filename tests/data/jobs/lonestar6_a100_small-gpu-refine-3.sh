#!/bin/bash
# hpcxtal refine for campaign /scratch/campaign: one array task per shard.
#SBATCH --job-name=hpcxtal-refine
#SBATCH --partition=gpu-a100-small
#SBATCH --account=DMR00000
#SBATCH --gpus-per-task=1
#SBATCH --time=12:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --array=0-2%2
#SBATCH --output=/scratch/campaign/jobs/logs/refine-%A_%a.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
module load gcc cuda python3
source $WORK/venvs/hpcxtal/bin/activate
export HDF5_USE_FILE_LOCKING=FALSE
set -u
export OMP_NUM_THREADS=32
# Task k runs the k-th shard listed in the shard file (unfinished shards only).
SHARD=$(sed -n "$(( ${SLURM_ARRAY_TASK_ID} + 1 ))p" /scratch/campaign/jobs/refine-shards.txt)
exec hpcxtal refine /scratch/campaign --shard "$SHARD"
