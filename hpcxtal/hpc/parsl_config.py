"""A Parsl configuration built from a site config: one executor per kind of node, and
one for MPI stages.

``gpu`` runs the stages the site places on GPU nodes (refinement by default; one worker
per ``gpus_per_task`` GPUs, pinned with ``available_accelerators``), ``cpu`` the others
(``cores_per_node / cores_per_task`` workers per node). ``mpi`` is Parsl's MPIExecutor
on a block of the rounds stage's nodes (GPU nodes by default): one worker on the
block's first node starts the stage's ranks over all of the block's nodes with the
site's MPI launcher. Every worker is pinned to its own block of cores
(``cpu_affinity="block"``: Parsl sets the affinity and ``OMP_NUM_THREADS``), so torch in
a worker uses that worker's cores and no more (on a CPU, threads beyond a worker's
cores only slow it down: BENCHMARKS.md, "Relaxation"). Providers and launchers
follow the site's scheduler and launcher; the workflow code never names a partition.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from hpcxtal.hpc.site import ExecutorSite, SiteConfig


def _launcher(ex: ExecutorSite):
    """Parsl's launcher matching the site's, with its binding flag and overrides (``ibrun``
    sites start worker pools with srun, as Parsl's own Frontera config does)."""
    from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher

    if ex.launcher == "mpiexec":
        bind = {"bind_cmd": ex.launch.bind_cmd} if ex.launch.bind_cmd else {}
        return MpiExecLauncher(overrides=ex.launch.overrides, **bind)
    if ex.launcher in ("srun", "ibrun"):
        return SrunLauncher(overrides=ex.launch.overrides)
    return SingleNodeLauncher()


def _worker_init(ex: ExecutorSite) -> str:
    """The site's node preparation; empty means 'this environment' (shared file system)."""
    if ex.worker_init.strip():
        return ex.worker_init
    return f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH"


def _provider(site: SiteConfig, ex: ExecutorSite, mpi_run_dir: Path | None = None):
    """The provider of ``ex``'s blocks; with ``mpi_run_dir`` (Parsl's run folder), blocks
    for MPI mode: one at a time with one worker pool on its first node (Parsl's
    SimpleLauncher)."""
    from parsl.launchers import SimpleLauncher, SingleNodeLauncher
    from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

    mpi = mpi_run_dir is not None
    worker_init = _worker_init(ex)
    if mpi and site.scheduler == "local":
        # Parsl's MPI mode reads the block's nodes from the scheduler; a local block is
        # this one machine, named in a PBS-style node file.
        nodefile = shlex.quote(str(Path(mpi_run_dir).resolve() / "local-nodefile"))
        worker_init += f"\nexport PBS_NODEFILE={nodefile}\nhostname > {nodefile}"
    common = dict(nodes_per_block=ex.nodes_per_block, init_blocks=0, min_blocks=0,
                  max_blocks=1 if mpi else ex.max_blocks, worker_init=worker_init,
                  launcher=SimpleLauncher() if mpi else _launcher(ex))
    if site.scheduler == "local":
        if not mpi:
            common["launcher"] = SingleNodeLauncher()
        return LocalProvider(**common)
    queue = ex.queue_for(ex.nodes_per_block)  # load_site checked that one takes a block
    if site.scheduler == "slurm":
        return SlurmProvider(partition=queue, account=ex.account, qos=ex.qos,
                             cores_per_node=ex.cores_per_node, walltime=ex.walltime,
                             mem_per_node=int(ex.mem_per_node_gb) if ex.mem_per_node_gb else None,
                             scheduler_options="\n".join(f"#SBATCH {o}" for o in ex.scheduler_options),
                             exclusive=False, **common)
    select = f"ngpus={ex.gpus_per_node}" if ex.gpus_per_node else ""
    return PBSProProvider(account=ex.account, queue=queue, cpus_per_node=ex.cores_per_node,
                          select_options=select, walltime=ex.walltime,
                          scheduler_options="\n".join(f"#PBS {o}" for o in ex.scheduler_options),
                          **common)


def _common(site: SiteConfig) -> dict:
    """Executor settings every executor shares: where workers reach the driver, how
    often they report, and the interchange started by this interpreter's copy (found
    without PATH: a venv used by its path, not activated)."""
    kwargs: dict = dict(heartbeat_period=10, heartbeat_threshold=60,
                        interchange_launch_cmd=[sys.executable, "-m",
                                                "parsl.executors.high_throughput.interchange"])
    if site.address:
        kwargs["address"] = site.address
    elif site.network_interface:
        from parsl.addresses import address_by_interface

        kwargs["address"] = address_by_interface(site.network_interface)
    return kwargs


def make_executor(site: SiteConfig, kind: str):
    """A HighThroughputExecutor labelled ``kind`` for the site's ``kind`` nodes."""
    from parsl.executors import HighThroughputExecutor

    ex = site.executor(kind)
    return HighThroughputExecutor(
        label=kind, provider=_provider(site, ex), max_workers_per_node=ex.workers_per_node(),
        cores_per_worker=ex.task_cores(),
        # worker k gets GPUs worker_gpus()[k] and the k-th block of cores (nearest first)
        available_accelerators=ex.worker_gpus(),
        cpu_affinity="block", **_common(site))


#: Parsl's MPI launcher for each site launcher (ibrun sites start MPI jobs with srun too;
#: a site without one uses mpiexec, e.g. the mpich wheel's on one machine).
MPI_LAUNCHERS = {"mpiexec": "mpiexec", "srun": "srun", "ibrun": "srun", "single": "mpiexec"}


def make_mpi_executor(site: SiteConfig, kind: str, run_dir: Path):
    """Parsl's MPIExecutor labelled ``mpi`` on blocks of the site's ``kind`` nodes (those
    of the MPI stage, rounds: GPU nodes by default): one MPI application at a time per
    block, spanning all of its nodes."""
    from parsl.executors import MPIExecutor

    ex = site.executor(kind)
    common = _common(site)
    # MPIExecutor annotates interchange_launch_cmd as a str, yet starts it as an argument
    # list like HighThroughputExecutor: set after construction (type-checked arguments).
    launch = common.pop("interchange_launch_cmd")
    executor = MPIExecutor(label="mpi", provider=_provider(site, ex, run_dir),
                           max_workers_per_block=1, mpi_launcher=MPI_LAUNCHERS[ex.launcher],
                           **common)
    executor.interchange_launch_cmd = launch
    return executor


def mpi_ranks(site: SiteConfig, kind: str) -> dict[str, int]:
    """An MPI stage's layout under ``hpcxtal run``: a Parsl resource specification
    spanning one block of the ``kind`` nodes, ``launch.ranks_per_node`` ranks each."""
    ex = site.executor(kind)
    return {"num_nodes": ex.nodes_per_block, "ranks_per_node": ex.launch.ranks_per_node,
            "num_ranks": ex.nodes_per_block * ex.launch.ranks_per_node}


def make_parsl_config(site: SiteConfig, run_dir: Path, retries: int = 1,
                      mpi: str | None = None):
    """The whole Parsl config, with the ``mpi`` executor on the ``mpi`` nodes (``gpu`` or
    ``cpu``) when given; ``run_dir`` keeps Parsl's logs inside the campaign."""
    from parsl.config import Config

    executors = [make_executor(site, "gpu"), make_executor(site, "cpu")]
    if mpi:
        executors.append(make_mpi_executor(site, mpi, run_dir))
    return Config(executors=executors, run_dir=str(run_dir), retries=retries,
                  strategy="simple", max_idletime=30, usage_tracking=0, initialize_logging=True)
