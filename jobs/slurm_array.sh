#!/bin/bash
# hpcxtal {{stage}} for campaign {{campaign}}: one array task per shard.
#SBATCH --job-name={{job_name}}
#SBATCH --partition={{partition}}
{{directives}}#SBATCH --time={{walltime}}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={{cores}}
#SBATCH --array=0-{{last_task}}{{array_limit}}
#SBATCH --output={{log_dir}}/{{stage}}-%A_%a.out
set -euo pipefail
{{worker_init}}
# Array task k runs the k-th shard listed in the shard file (unfinished shards only).
SHARD=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {{shard_list}})
export OMP_NUM_THREADS={{cores}}
exec {{command}} {{stage}} {{campaign}} --shard "$SHARD"
