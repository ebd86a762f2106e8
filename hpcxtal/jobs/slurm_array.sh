#!/bin/bash
# hpcxtal {{stage}} for campaign {{campaign}}: {{what}}.
#SBATCH --job-name={{job_name}}
#SBATCH --partition={{partition}}
{{directives}}#SBATCH --time={{walltime}}
#SBATCH --nodes={{nodes}}
#SBATCH --ntasks={{ntasks}}
#SBATCH --cpus-per-task={{cores}}
{{array_line}}#SBATCH --output={{log_dir}}/{{stage}}-{{log_pattern}}.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
{{worker_init}}
set -u
export OMP_NUM_THREADS={{cores}}
{{run_lines}}
