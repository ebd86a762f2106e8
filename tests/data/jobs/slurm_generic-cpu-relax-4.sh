#!/bin/bash
# hpcxtal relax for campaign /scratch/campaign: one array task per shard.
#SBATCH --job-name=hpcxtal-relax
#SBATCH --partition=cpu
#SBATCH --account=my_allocation
#SBATCH --time=02:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=64
#SBATCH --array=0-3%50
#SBATCH --output=/scratch/campaign/jobs/logs/relax-%A_%a.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
source $HOME/venvs/hpcxtal/bin/activate
set -u
export OMP_NUM_THREADS=64
# Task k runs the k-th shard listed in the shard file (unfinished shards only).
SHARD=$(sed -n "$(( ${SLURM_ARRAY_TASK_ID} + 1 ))p" /scratch/campaign/jobs/relax-shards.txt)
exec hpcxtal relax /scratch/campaign --shard "$SHARD"
