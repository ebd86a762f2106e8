"""A Parsl configuration built from a site config: one executor per kind of node.

``gpu`` runs refinement (one worker per GPU, pinned with ``available_accelerators``),
``cpu`` runs the per-shard CPU stages and the merge. Every worker is pinned to its own
block of cores (``cpu_affinity="block"``: Parsl sets the affinity and ``OMP_NUM_THREADS``),
so torch in a worker uses that worker's cores and no more (on a CPU, threads beyond a
worker's cores only slow it down: BENCHMARKS.md, "Relaxation"). Providers and launchers
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


def _provider(site: SiteConfig, ex: ExecutorSite):
    from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

    common = dict(nodes_per_block=ex.nodes_per_block, init_blocks=0, min_blocks=0,
                  max_blocks=ex.max_blocks, worker_init=_worker_init(ex), launcher=_launcher(ex))
    if site.scheduler == "local":
        from parsl.launchers import SingleNodeLauncher

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


def make_executor(site: SiteConfig, kind: str):
    """A HighThroughputExecutor labelled ``kind`` for the site's ``kind`` nodes."""
    from parsl.executors import HighThroughputExecutor

    ex = site.executor(kind)
    workers = ex.gpus_per_node or max(1, ex.cores_per_node // ex.task_cores())
    kwargs = {}
    if site.address:
        kwargs["address"] = site.address
    elif site.network_interface:
        from parsl.addresses import address_by_interface

        kwargs["address"] = address_by_interface(site.network_interface)
    return HighThroughputExecutor(
        label=kind, provider=_provider(site, ex), max_workers_per_node=workers,
        cores_per_worker=ex.task_cores(),
        # worker k gets GPU gpu_order[k] and the k-th block of cores (nearest first)
        available_accelerators=[str(g) for g in ex.gpu_order()],
        cpu_affinity="block",
        heartbeat_period=10, heartbeat_threshold=60,
        # this interpreter's copy, found without PATH (a venv used by its path, not activated)
        interchange_launch_cmd=[sys.executable, "-m",
                                "parsl.executors.high_throughput.interchange"],
        **kwargs)


def make_parsl_config(site: SiteConfig, run_dir: Path, retries: int = 1):
    """The whole Parsl config; ``run_dir`` keeps Parsl's logs inside the campaign."""
    from parsl.config import Config

    return Config(executors=[make_executor(site, "gpu"), make_executor(site, "cpu")],
                  run_dir=str(run_dir), retries=retries, strategy="simple", max_idletime=30,
                  usage_tracking=0, initialize_logging=True)
