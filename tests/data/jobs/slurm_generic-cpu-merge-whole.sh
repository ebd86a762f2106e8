#!/bin/bash
# hpcxtal merge for campaign /scratch/campaign: one job for the whole campaign.
#SBATCH --job-name=hpcxtal-merge
#SBATCH --partition=cpu
#SBATCH --account=my_allocation
#SBATCH --time=02:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=64
#SBATCH --output=/scratch/campaign/jobs/logs/merge-%j.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
source $HOME/venvs/hpcxtal/bin/activate
set -u
export OMP_NUM_THREADS=64
exec hpcxtal merge /scratch/campaign
