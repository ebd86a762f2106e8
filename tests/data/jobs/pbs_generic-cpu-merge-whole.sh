#!/bin/bash
# hpcxtal merge for campaign /scratch/campaign: one job for the whole campaign.
#PBS -N hpcxtal-merge
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
exec hpcxtal merge /scratch/campaign
