#!/bin/bash
# hpcxtal {{stage}} for campaign {{campaign}}: {{what}}.
#SBATCH --job-name={{job_name}}
#SBATCH --partition={{partition}}
{{directives}}#SBATCH --time={{walltime}}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={{cores}}
{{array_line}}#SBATCH --output={{log_dir}}/{{stage}}-{{log_pattern}}.out
set -euo pipefail
{{worker_init}}
export OMP_NUM_THREADS={{cores}}
{{run_lines}}
