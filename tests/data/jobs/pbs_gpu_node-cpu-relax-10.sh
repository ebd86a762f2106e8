#!/bin/bash
# hpcxtal relax for campaign /scratch/campaign: one array task per 8 shards.
#PBS -N hpcxtal-relax
#PBS -q workq
#PBS -A my_project
#PBS -l walltime=02:00:00
#PBS -l select=1:ncpus=64
#PBS -J 0-1%50
#PBS -j oe
#PBS -o /scratch/campaign/jobs/logs/
#PBS -r y
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
source $HOME/venvs/hpcxtal/bin/activate
set -u
export OMP_NUM_THREADS=8
# Task k runs shards 8k+1 .. 8k+8 of the shard file (unfinished shards only) at once,
# each on its own 8 cores.
PIDS=()
for SLOT in $(seq 0 7); do
    SHARD=$(sed -n "$(( ${PBS_ARRAY_INDEX} * 8 + SLOT + 1 ))p" /scratch/campaign/jobs/relax-shards.txt)
    [ -n "$SHARD" ] || break
    CPUS=$(( SLOT * 8 ))-$(( SLOT * 8 + 7 ))
    taskset -c $CPUS hpcxtal relax /scratch/campaign --shard "$SHARD" &
    PIDS+=($!)
done
STATUS=0
for PID in "${PIDS[@]}"; do wait "$PID" || STATUS=1; done
exit $STATUS
