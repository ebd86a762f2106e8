#!/bin/bash
# hpcxtal {{stage}} for campaign {{campaign}}: {{what}}.
#PBS -N {{job_name}}
#PBS -q {{partition}}
{{directives}}#PBS -l walltime={{walltime}}
#PBS -l select=1:ncpus={{cores}}{{gpu_select}}
{{array_line}}#PBS -j oe
#PBS -o {{log_dir}}/
#PBS -r y
set -euo pipefail
{{worker_init}}
export OMP_NUM_THREADS={{cores}}
{{run_lines}}
