#!/bin/bash
# hpcxtal {{stage}} for campaign {{campaign}}: {{what}}.
#PBS -N {{job_name}}
#PBS -q {{partition}}
{{directives}}#PBS -l walltime={{walltime}}
#PBS -l select={{nodes}}:ncpus={{job_cores}}{{gpu_select}}
{{array_line}}#PBS -j oe
#PBS -o {{log_dir}}/
#PBS -r y
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
{{worker_init}}
set -u
export OMP_NUM_THREADS={{cores}}
{{run_lines}}
