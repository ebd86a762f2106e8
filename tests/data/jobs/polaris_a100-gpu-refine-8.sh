#!/bin/bash
# hpcxtal refine for campaign /scratch/campaign: one array task per shard.
#PBS -N hpcxtal-refine
#PBS -q prod
#PBS -A MyProject
#PBS -l filesystems=home:eagle
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=8:ngpus=1
#PBS -J 0-7
#PBS -j oe
#PBS -o /scratch/campaign/jobs/logs/
#PBS -r y
set -euo pipefail
module use /soft/modulefiles
module load conda
conda activate hpcxtal
export HDF5_USE_FILE_LOCKING=FALSE
export OMP_NUM_THREADS=8
# Task k runs the k-th shard listed in the shard file (unfinished shards only).
SHARD=$(sed -n "$(( ${PBS_ARRAY_INDEX} + 1 ))p" /scratch/campaign/jobs/refine-shards.txt)
exec hpcxtal refine /scratch/campaign --shard "$SHARD"
