#!/bin/bash
# hpcxtal refine for campaign /scratch/campaign: one array task per 4 shards.
#PBS -N hpcxtal-refine
#PBS -q preemptable
#PBS -A MyProject
#PBS -l filesystems=home:eagle
#PBS -l walltime=03:00:00
#PBS -l select=1:ncpus=32:ngpus=4
#PBS -J 0-1%20
#PBS -j oe
#PBS -o /scratch/campaign/jobs/logs/
#PBS -r y
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
module use /soft/modulefiles
module load conda
conda activate base
source /eagle/MyProject/venvs/hpcxtal/bin/activate
export HDF5_USE_FILE_LOCKING=FALSE
set -u
export OMP_NUM_THREADS=8
# Task k runs shards 4k+1 .. 4k+4 of the shard file (unfinished shards only) at once,
# each on its own 8 cores and its own GPU.
GPUS=(3 2 1 0)
PIDS=()
for SLOT in $(seq 0 3); do
    SHARD=$(sed -n "$(( ${PBS_ARRAY_INDEX} * 4 + SLOT + 1 ))p" /scratch/campaign/jobs/refine-shards.txt)
    [ -n "$SHARD" ] || break
    CPUS=$(( SLOT * 8 ))-$(( SLOT * 8 + 7 ))
    CUDA_VISIBLE_DEVICES=${GPUS[$SLOT]} mpiexec -n 1 --ppn 1 --cpu-bind list:$CPUS hpcxtal refine /scratch/campaign --shard "$SHARD" &
    PIDS+=($!)
done
STATUS=0
for PID in "${PIDS[@]}"; do wait "$PID" || STATUS=1; done
exit $STATUS
