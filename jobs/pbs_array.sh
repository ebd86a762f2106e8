#!/bin/bash
# hpcxtal {{stage}} for campaign {{campaign}}: one array subjob per shard.
#PBS -N {{job_name}}
#PBS -q {{partition}}
{{directives}}#PBS -l walltime={{walltime}}
#PBS -l select=1:ncpus={{cores}}{{gpu_select}}
{{array_line}}#PBS -j oe
#PBS -o {{log_dir}}/
#PBS -r y
set -euo pipefail
{{worker_init}}
# Subjob k runs the k-th shard listed in the shard file (unfinished shards only).
SHARD=$(sed -n "$(( ${PBS_ARRAY_INDEX:-0} + 1 ))p" {{shard_list}})
export OMP_NUM_THREADS={{cores}}
exec {{command}} {{stage}} {{campaign}} --shard "$SHARD"
