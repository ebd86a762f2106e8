#!/bin/bash
# hpcxtal relax for campaign /scratch/campaign: one array task per shard.
#PBS -N hpcxtal-relax
#PBS -q workq
#PBS -A my_project
#PBS -l walltime=02:00:00
#PBS -l select=1:ncpus=64
#PBS -j oe
#PBS -o /scratch/campaign/jobs/logs/
#PBS -r y
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
source $HOME/venvs/hpcxtal/bin/activate
set -u
export OMP_NUM_THREADS=64
# Task k runs the k-th shard listed in the shard file (unfinished shards only).
SHARD=$(sed -n "$(( ${PBS_ARRAY_INDEX:-0} + 1 ))p" /scratch/campaign/jobs/relax-shards.txt)
exec hpcxtal relax /scratch/campaign --shard "$SHARD"
