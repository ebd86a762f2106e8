#!/bin/bash
# hpcxtal refine for campaign /scratch/campaign: one array task per shard.
#SBATCH --job-name=hpcxtal-refine
#SBATCH --partition=gpu
#SBATCH --account=my_allocation
#SBATCH --mem=65536M
#SBATCH --gpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --array=0-7
#SBATCH --output=/scratch/campaign/jobs/logs/refine-%A_%a.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
module load cuda
source $HOME/venvs/hpcxtal/bin/activate
set -u
export OMP_NUM_THREADS=8
# Task k runs the k-th shard listed in the shard file (unfinished shards only).
SHARD=$(sed -n "$(( ${SLURM_ARRAY_TASK_ID} + 1 ))p" /scratch/campaign/jobs/refine-shards.txt)
exec hpcxtal refine /scratch/campaign --shard "$SHARD"
