"""Site configs: where and how a campaign's stages run (``hpcxtal/site_configs/*.yaml``).

A site names its scheduler (``local``, ``slurm`` or ``pbs``), two executors, ``gpu``
(by default refinement and rounds) and ``cpu`` (by default every other stage), and
``stages``, which moves a stage to the other executor (``relax: gpu`` where every node
has GPUs). Each executor has partition (or queues chosen by job size), account,
walltime, node shape, GPUs per worker, how many shards one array task runs at once,
launcher and launch options, and the shell lines that prepare a node (``worker_init``:
modules, environments). Nothing about a site lives in code; a user's
sites live in the campaign directory or in ``$HPCXTAL_SITE_DIR`` (docs/CLUSTERS.md).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hpcxtal.config import ConfigError, from_mapping, load_yaml

SCHEDULERS = ("local", "slurm", "pbs")
LAUNCHERS = ("single", "srun", "mpiexec", "ibrun")
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2}):(\d{2})$")
#: Placeholders a batch-job launch command may use (filled per process by hpc/jobs.py).
LAUNCH_FIELDS = ("cpus", "gpu", "slot", "cores", "ranks", "ranks_per_node")
#: How a batch job starts an MPI stage's ranks, per launcher, unless ``launch.mpi_command``.
MPI_COMMANDS = {"mpiexec": "mpiexec -n {ranks} --ppn {ranks_per_node}",
                "srun": "srun --ntasks={ranks} --cpus-per-task={cores}",
                "ibrun": "ibrun"}
#: The sites shipped as package data (wheels install unzipped, so this is a real folder).
SHIPPED_SITE_DIR = Path(str(resources.files("hpcxtal") / "site_configs"))


def walltime_seconds(walltime: str) -> int:
    """Seconds in a ``[D-]HH:MM:SS`` walltime; ValueError naming the format otherwise."""
    match = _WALLTIME.match(walltime)
    if not match:
        raise ValueError(f"walltime {walltime!r} is not [D-]HH:MM:SS, e.g. '02:00:00'")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _check_template(name: str, template: str) -> None:
    """Reject placeholders a launch command cannot be filled with, before anything runs."""
    for field_name in re.findall(r"{([^{}]*)}", template):
        if field_name not in LAUNCH_FIELDS:
            raise ValueError(f"{name} {template!r}: unknown placeholder {{{field_name}}}; "
                             f"valid ones are {', '.join('{' + f + '}' for f in LAUNCH_FIELDS)}")


@dataclass(frozen=True, kw_only=True)
class Queue:
    """A partition or queue and the jobs it takes, so a job goes where its size is allowed
    (Polaris: ``prod`` takes 10 to 496 nodes, smaller jobs need another queue)."""

    name: str
    min_nodes: int = 1
    max_nodes: int | None = None  # null: no limit
    max_walltime: str | None = None  # [D-]HH:MM:SS; null: no limit

    def __post_init__(self) -> None:
        if self.min_nodes < 1 or (self.max_nodes is not None and self.max_nodes < self.min_nodes):
            raise ValueError(f"queue {self.name!r}: need 1 <= min_nodes <= max_nodes, got "
                             f"{self.min_nodes} and {self.max_nodes}")
        if self.max_walltime is not None:
            walltime_seconds(self.max_walltime)

    def takes(self, nodes: int, walltime: str) -> bool:
        """Whether a job of ``nodes`` nodes and ``walltime`` fits this queue's limits."""
        return (self.min_nodes <= nodes <= (self.max_nodes or nodes) and
                (self.max_walltime is None or
                 walltime_seconds(walltime) <= walltime_seconds(self.max_walltime)))


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """How processes start on a node: the launcher arguments of Parsl's worker pools and
    the commands a batch job starts its shard processes and MPI ranks with."""

    bind_cmd: str | None = None  # the launcher's CPU-binding flag for Parsl's MpiExecLauncher
    overrides: str = ""  # extra arguments of the launcher that starts Parsl worker pools
    # Prefix that starts one shard's process in a batch job (e.g. binding it to its cores:
    # "mpiexec -n 1 --ppn 1 --cpu-bind list:{cpus}"); empty: the process starts directly.
    shard_command: str = ""
    # Prefix that starts an MPI stage's ranks in a batch job; null: the launcher's default.
    mpi_command: str | None = None
    ranks_per_node: int = 1  # MPI ranks per node of the MPI stage (rounds), one per GPU
    gpu_order: list[int] | None = None  # GPUs in worker / slot order (closest to its cores)

    def __post_init__(self) -> None:
        _check_template("launch.shard_command", self.shard_command)
        _check_template("launch.mpi_command", self.mpi_command or "")
        if self.ranks_per_node < 1:
            raise ValueError(f"launch.ranks_per_node must be at least 1, got {self.ranks_per_node}")


@dataclass(frozen=True, kw_only=True)
class ExecutorSite:
    """One kind of node a site offers (GPU nodes for refinement, CPU nodes for the rest)."""

    partition: str | None = None  # SLURM partition or PBS queue; None only for local
    queues: list[Queue] = field(default_factory=list)  # instead of partition: first that fits
    account: str | None = None  # allocation charged; null if the cluster needs none
    qos: str | None = None
    walltime: str = "01:00:00"  # [D-]HH:MM:SS
    nodes_per_block: int = 1
    max_blocks: int = 1  # jobs (Parsl blocks) in flight at once
    cores_per_node: int = 1  # at most the cores a job gets: Parsl pins workers to them
    gpus_per_node: int = 0
    gpus_per_task: int = 1  # GPUs each worker / shard process gets (GPU nodes only)
    cores_per_task: int | None = None  # per shard process; default: its GPUs' share, or the node
    shards_per_task: int = 1  # shards one array task runs at once on its node (one per GPU)
    mem_per_node_gb: float | None = None
    launcher: str = "single"  # how processes start: single, srun, mpiexec or ibrun
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    worker_init: str = ""  # shell lines run before hpcxtal on a node
    scheduler_options: list[str] = field(default_factory=list)  # extra #SBATCH / #PBS lines
    max_array_parallel: int | None = None  # array tasks running at once (%M / max_run)

    def __post_init__(self) -> None:
        walltime_seconds(self.walltime)
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher {self.launcher!r} is not one of {LAUNCHERS}")
        for name in ("nodes_per_block", "max_blocks", "cores_per_node", "shards_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be 0 or more, got {self.gpus_per_node}")
        if self.gpus_per_node and not 1 <= self.gpus_per_task <= self.gpus_per_node:
            raise ValueError(f"gpus_per_task must be within 1-{self.gpus_per_node} "
                             f"(gpus_per_node), got {self.gpus_per_task}")
        if self.max_array_parallel is not None and self.max_array_parallel < 1:
            raise ValueError("max_array_parallel must be at least 1 or null")
        if self.cores_per_task is not None and not 1 <= self.cores_per_task <= self.cores_per_node:
            raise ValueError(f"cores_per_task must be within 1-{self.cores_per_node} "
                             f"(cores_per_node), got {self.cores_per_task}")
        if self.partition and self.queues:
            raise ValueError("give partition or queues, not both")
        for name, count, gpus in (("shards_per_task", self.shards_per_task, self.gpus_per_task),
                                  ("launch.ranks_per_node", self.launch.ranks_per_node, 1)):
            if self.gpus_per_node and count * gpus > self.gpus_per_node:
                raise ValueError(f"{name} {count} x {gpus} GPU(s) per process is more than "
                                 f"gpus_per_node ({self.gpus_per_node})")
            if count * self.task_cores() > self.cores_per_node:
                raise ValueError(f"{name} {count} x {self.task_cores()} cores per process is "
                                 f"more than cores_per_node ({self.cores_per_node}); set "
                                 "cores_per_task")
        order = self.launch.gpu_order
        if order is not None and sorted(order) != list(range(self.gpus_per_node)):
            raise ValueError(f"launch.gpu_order {order} must list each GPU 0-"
                             f"{self.gpus_per_node - 1} once (gpus_per_node {self.gpus_per_node})")
        if self.launch.overrides and self.launcher == "single":
            raise ValueError("launch.overrides needs launcher srun, mpiexec or ibrun (Parsl's "
                             "single-node launcher takes no arguments)")

    def task_cores(self) -> int:
        """Cores one shard process gets: as set, else its GPUs' share of the node."""
        if self.cores_per_task is not None:
            return self.cores_per_task
        return max(1, self.cores_per_node // max(1, self.gpus_per_node // self.gpus_per_task))

    def task_gpus(self) -> int:
        """GPUs one worker or shard process gets (0 on nodes without GPUs)."""
        return self.gpus_per_task if self.gpus_per_node else 0

    def workers_per_node(self) -> int:
        """Shard processes a node holds at once: one per ``gpus_per_task`` GPUs, else one
        per ``cores_per_task`` cores (the size of a Parsl block's worker pool)."""
        if self.gpus_per_node:
            return self.gpus_per_node // self.gpus_per_task
        return max(1, self.cores_per_node // self.task_cores())

    def mpi_command(self) -> str | None:
        """The command prefix that starts an MPI stage's ranks in a batch job, or None."""
        return self.launch.mpi_command or MPI_COMMANDS.get(self.launcher)

    def gpu_order(self) -> list[int]:
        """The GPUs in worker order: as set (nearest to its cores first), else 0, 1, ..."""
        return list(self.launch.gpu_order or range(self.gpus_per_node))

    def worker_gpus(self) -> list[str]:
        """The GPUs of worker or slot k, comma-separated (a CUDA_VISIBLE_DEVICES value):
        consecutive ``gpus_per_task`` GPUs of :meth:`gpu_order`."""
        order, per = self.gpu_order(), self.gpus_per_task
        return [",".join(map(str, order[k * per:(k + 1) * per]))
                for k in range(self.workers_per_node())] if order else []

    def queue_for(self, nodes: int) -> str | None:
        """The partition or queue for a job of ``nodes`` nodes: ``partition``, else the first
        of ``queues`` whose node range and walltime limit take it (None if none does)."""
        if self.partition or not self.queues:
            return self.partition
        return next((q.name for q in self.queues if q.takes(nodes, self.walltime)), None)


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    """A whole site: scheduler, file-system policy, the two executors and which stage
    runs on which (``stages``: overrides of the pipeline's defaults)."""

    name: str
    scheduler: str = "local"
    hdf5_file_locking: bool = True  # switch off on Lustre/GPFS without flock
    address: str | None = None  # where workers reach the driver (IP or host); null: probe
    network_interface: str | None = None  # or the driver's interface to use (e.g. bond0)
    gpu: ExecutorSite = field(default_factory=ExecutorSite)
    cpu: ExecutorSite = field(default_factory=ExecutorSite)
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "gpu" or "cpu"

    def __post_init__(self) -> None:
        from hpcxtal.stages import PIPELINE

        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {self.scheduler!r} is not one of {SCHEDULERS}")
        if self.address and self.network_interface:
            raise ValueError("give address or network_interface, not both")
        specs = {s.name: s for s in PIPELINE}
        for name, kind in self.stages.items():
            if name not in specs:
                raise ValueError(f"stages: unknown stage {name!r}; stages are {list(specs)}")
            if kind not in ("gpu", "cpu"):
                raise ValueError(f"stages.{name}: {kind!r} is not 'gpu' or 'cpu'")
            if kind == "gpu" and not specs[name].uses_gpu:
                gpu_ok = [s.name for s in PIPELINE if s.uses_gpu]
                raise ValueError(f"stages.{name}: gpu, but {name} cannot use a GPU; only "
                                 f"{', '.join(gpu_ok)} can run on the gpu executor")
        for spec in (s for s in PIPELINE if s.mpi):
            kind = self.stage_executor(spec.name)
            ex = self.executor(kind)
            if ex.launch.ranks_per_node * ex.nodes_per_block > 1 and ex.mpi_command() is None:
                raise ValueError(f"{kind}: {spec.name} would run {ex.nodes_per_block} node(s) x "
                                 f"launch.ranks_per_node {ex.launch.ranks_per_node}: more than "
                                 "one MPI rank needs an MPI launcher (srun, mpiexec, ibrun) or "
                                 f"launch.mpi_command; launcher is {ex.launcher!r}")

    def executor(self, kind: str) -> ExecutorSite:
        """The ``gpu`` or ``cpu`` executor."""
        if kind not in ("gpu", "cpu"):
            raise ValueError(f"executor {kind!r} is not 'gpu' or 'cpu'")
        return getattr(self, kind)

    def stage_executor(self, stage: str) -> str:
        """The executor stage ``stage`` runs on here: the site's ``stages`` entry, else the
        pipeline's default."""
        from hpcxtal.stages import stage_spec

        return self.stages.get(stage, stage_spec(stage).executor)

    def place(self, stage: str, resources=None):
        """``resources`` (a :class:`hpcxtal.stages.Resources`) of a process running
        ``stage`` here: with device ``cuda`` (the worker's or array slot's own GPUs, the
        only ones it sees; unset batch budgets then take their GPU values) when the site
        places the stage on GPU nodes and torch sees a GPU, unless a device is set. A
        device is a resource: it never makes an output stale."""
        import dataclasses

        from hpcxtal.stages import Resources

        resources = resources or Resources()
        if (resources.device is not None or self.stage_executor(stage) != "gpu"
                or not self.gpu.gpus_per_node):
            return resources
        import torch

        return dataclasses.replace(resources, device="cuda") if torch.cuda.is_available() \
            else resources


def shipped_sites() -> list[str]:
    """Names of the sites shipped with hpcxtal, sorted."""
    return sorted(p.stem for p in SHIPPED_SITE_DIR.glob("*.yaml"))


def site_dirs(search: list[Path] | None = None) -> list[Path]:
    """Where site names are looked up, first match wins: ``search`` (e.g. the campaign
    directory), each folder of ``$HPCXTAL_SITE_DIR`` (``:``-separated), ``./site_configs``,
    then the shipped sites."""
    folders = list(search or [])
    folders += [Path(p) for p in os.environ.get("HPCXTAL_SITE_DIR", "").split(os.pathsep) if p]
    folders += [Path.cwd() / "site_configs", SHIPPED_SITE_DIR]
    return list(dict.fromkeys(f.resolve() for f in folders))


def site_path(name: str | os.PathLike, search: list[Path] | None = None) -> Path:
    """The YAML file of site ``name``: a path as given, else ``NAME.yaml`` in the first
    of ``site_dirs(search)`` that has it."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    folders = site_dirs(search)
    for folder in folders:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"site {str(name)!r}: no {name}.yaml in {', '.join(map(str, folders))}; "
                      "give a path to a site YAML or set HPCXTAL_SITE_DIR to its folder")


def load_site(name: str | os.PathLike, search: list[Path] | None = None) -> SiteConfig:
    """Load and validate a site config; errors name the file, the key and the fix."""
    path = site_path(name, search)
    data = load_yaml(path)
    site = from_mapping(SiteConfig, data, str(path))
    if site.scheduler != "local":
        for kind in ("gpu", "cpu"):
            section = (data or {}).get(kind) or {}
            ex = site.executor(kind)
            word = "queue" if site.scheduler == "pbs" else "partition"
            if not ex.partition and not ex.queues:
                raise ConfigError(f"{path}: {kind}.partition (or {kind}.queues) is required for a "
                                  f"{site.scheduler} site (the {word} its jobs go to)")
            if "account" not in section:
                raise ConfigError(f"{path}: {kind}: missing required key 'account' (your "
                                  "allocation, or null if the cluster charges none)")
            for nodes, what in ((1, "an array task"), (ex.nodes_per_block, "a Parsl block")):
                if ex.queue_for(nodes) is None:
                    raise ConfigError(f"{path}: {kind}.queues: no queue takes {what} of {nodes} "
                                      f"node(s) for {ex.walltime}; add one or change "
                                      f"{kind}.nodes_per_block / {kind}.walltime")
    return site


def apply_site(campaign) -> SiteConfig:
    """The campaign's site config, with its HDF5 file-locking policy applied to this
    process (every process that opens a campaign's files calls this first)."""
    from hpcxtal.store.hdf5 import set_file_locking

    site = load_site(campaign.config.site, search=[campaign.root])
    set_file_locking(site.hdf5_file_locking)
    return site
