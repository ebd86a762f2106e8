#!/bin/bash
# hpcxtal rounds for campaign /scratch/campaign: one job for the whole campaign on 40 MPI ranks over 10 nodes.
#PBS -N hpcxtal-rounds
#PBS -q prod
#PBS -A MyProject
#PBS -l filesystems=home:eagle
#PBS -l walltime=03:00:00
#PBS -l select=10:ncpus=32:ngpus=4
#PBS -j oe
#PBS -o /scratch/campaign/jobs/logs/
#PBS -r y
set -eo pipefail
# node preparation (module and conda scripts read unset variables: -u only after it)
module use /soft/modulefiles
module load conda
conda activate base
source /eagle/MyProject/venvs/hpcxtal/bin/activate
export HDF5_USE_FILE_LOCKING=FALSE
set -u
export OMP_NUM_THREADS=8
# rank k of a node uses cuda:k, the k-th GPU listed: the one nearest its cores
export CUDA_VISIBLE_DEVICES=3,2,1,0
exec mpiexec -n 40 --ppn 4 --depth=8 --cpu-bind depth hpcxtal rounds /scratch/campaign
