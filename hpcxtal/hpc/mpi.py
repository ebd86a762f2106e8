"""MPI plumbing for refinement: the world communicator, node-local GPU binding and
rank failures that stop every rank with a clear message.

mpi4py is imported only when the process was started by an MPI launcher (mpiexec,
srun with PMI), so plain runs never initialise MPI.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)
#: Variables MPI launchers set in every rank (MPICH/Hydra, Open MPI, PMI/PMIx, Intel MPI).
_LAUNCH_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
                    "SLURM_LOCALID")


def world():
    """The MPI world communicator when launched under MPI with more than one rank, else None."""
    if not any(os.environ.get(v) for v in _LAUNCH_VARS):
        return None
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def local_rank(comm) -> int:
    """This rank's index among the ranks of its node."""
    for var in _LOCAL_RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


def rank_device(comm) -> str | None:
    """The GPU this rank should use (``cuda:k`` by node-local rank over the GPUs visible,
    which respects a pre-set CUDA_VISIBLE_DEVICES), or None without GPUs."""
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{local_rank(comm) % torch.cuda.device_count()}"


@contextmanager
def abort_on_error(comm) -> Iterator[None]:
    """If this rank raises, report it and abort every rank instead of leaving the
    others waiting in a collective forever."""
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - any failure must stop the job
        if comm is None:
            raise
        rank = comm.Get_rank()
        sys.stderr.write(f"hpcxtal: MPI rank {rank} of {comm.Get_size()} failed: "
                         f"{err.__class__.__name__}: {err}\n")
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)


_PROBE = ("import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; "
          "print(mpi4py.__version__); print(MPI.Get_library_version().strip().splitlines()[0])")


def mpi_library(python: str = sys.executable, timeout: float = 60.0) -> str:
    """One line naming the MPI library mpi4py is bound to (pip MPICH or the site's MPI),
    probed in a child process that does not initialise MPI, so a broken MPI cannot crash
    or hang the caller."""
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"mpi4py did not answer within {timeout:.0f} s (loading the MPI library hangs)"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        if "No module named 'mpi4py'" in last:
            return ("mpi4py not installed: refinement runs as one process per job "
                    "(install mpi4py against the site MPI, docs/CLUSTERS.md)")
        return f"mpi4py cannot load an MPI library: {last}"
    version, library = (proc.stdout.strip().splitlines() + ["", ""])[:2]
    return f"mpi4py {version} bound to {' '.join(library.split())}{_pip_mpich_note(python)}"


def _pip_mpich_note(python: str) -> str:
    """A warning suffix when the pip ``mpich`` package is installed in that environment."""
    probe = "import importlib.metadata as m; print(m.version('mpich'))"
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return ""
    return (f" (the pip package mpich {proc.stdout.strip()} is installed: on a cluster, "
            "uninstall it so mpi4py uses the site MPI)")
