"""Cluster glue: site configs, job scripts and arrays, Parsl and MPI drivers."""
