#!/bin/bash
# hpcxtal rounds for campaign /scratch/campaign: one job for the whole campaign on 3 MPI ranks.
#SBATCH --job-name=hpcxtal-rounds
#SBATCH --partition=gpu-a100
#SBATCH --account=DMR00000
#SBATCH --gpus-per-task=1
#SBATCH --time=12:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=3
#SBATCH --cpus-per-task=42
#SBATCH --output=/scratch/campaign/jobs/logs/rounds-%j.out
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
module load gcc cuda python3
source $WORK/venvs/hpcxtal/bin/activate
export HDF5_USE_FILE_LOCKING=FALSE
set -u
export OMP_NUM_THREADS=42
exec ibrun hpcxtal rounds /scratch/campaign
