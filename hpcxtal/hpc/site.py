"""Site configs: where and how a campaign's stages run (``hpcxtal/site_configs/*.yaml``).

A site names its scheduler (``local``, ``slurm`` or ``pbs``) and two executors: ``gpu``
(refinement) and ``cpu`` (topology, relaxation, merge), each with partition or queue,
account, walltime, node shape, launcher and the shell lines that prepare a node
(``worker_init``: modules, environments). Nothing about a site lives in code.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hpcxtal.config import ConfigError, from_mapping, load_yaml

SCHEDULERS = ("local", "slurm", "pbs")
LAUNCHERS = ("single", "srun", "mpiexec")
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")
#: The sites shipped as package data (wheels install unzipped, so this is a real folder).
SHIPPED_SITE_DIR = Path(str(resources.files("hpcxtal") / "site_configs"))


@dataclass(frozen=True, kw_only=True)
class ExecutorSite:
    """One kind of node a site offers (GPU nodes for refinement, CPU nodes for the rest)."""

    partition: str | None = None  # SLURM partition or PBS queue; None only for local
    account: str | None = None  # allocation charged; null if the cluster needs none
    qos: str | None = None
    walltime: str = "01:00:00"  # [D-]HH:MM:SS
    nodes_per_block: int = 1
    max_blocks: int = 1  # jobs (Parsl blocks) in flight at once
    cores_per_node: int = 1  # at most the cores a job gets: Parsl pins workers to them
    gpus_per_node: int = 0
    cores_per_task: int | None = None  # per array task; default: a GPU's share, or the node
    mem_per_node_gb: float | None = None
    launcher: str = "single"  # how workers start on a block: single, srun or mpiexec
    worker_init: str = ""  # shell lines run before hpcxtal on a node
    scheduler_options: list[str] = field(default_factory=list)  # extra #SBATCH / #PBS lines
    max_array_parallel: int | None = None  # array tasks running at once (%M / max_run)

    def __post_init__(self) -> None:
        if not _WALLTIME.match(self.walltime):
            raise ValueError(f"walltime {self.walltime!r} is not [D-]HH:MM:SS, e.g. '02:00:00'")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher {self.launcher!r} is not one of {LAUNCHERS}")
        for name in ("nodes_per_block", "max_blocks", "cores_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be 0 or more, got {self.gpus_per_node}")
        if self.max_array_parallel is not None and self.max_array_parallel < 1:
            raise ValueError("max_array_parallel must be at least 1 or null")
        if self.cores_per_task is not None and not 1 <= self.cores_per_task <= self.cores_per_node:
            raise ValueError(f"cores_per_task must be within 1-{self.cores_per_node} "
                             f"(cores_per_node), got {self.cores_per_task}")

    def task_cores(self) -> int:
        """Cores one array task asks for: as set, else one GPU's share of the node."""
        if self.cores_per_task is not None:
            return self.cores_per_task
        return max(1, self.cores_per_node // max(1, self.gpus_per_node))


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    """A whole site: scheduler, file-system policy and the two executors."""

    name: str
    scheduler: str = "local"
    hdf5_file_locking: bool = True  # switch off on Lustre/GPFS without flock
    address: str | None = None  # where workers reach the driver (IP or host); null: probe
    gpu: ExecutorSite = field(default_factory=ExecutorSite)
    cpu: ExecutorSite = field(default_factory=ExecutorSite)

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {self.scheduler!r} is not one of {SCHEDULERS}")

    def executor(self, kind: str) -> ExecutorSite:
        if kind not in ("gpu", "cpu"):
            raise ValueError(f"executor {kind!r} is not 'gpu' or 'cpu'")
        return getattr(self, kind)


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
            if not site.executor(kind).partition:
                raise ConfigError(f"{path}: {kind}.partition is required for a {site.scheduler} "
                                  f"site (the {'queue' if site.scheduler == 'pbs' else 'partition'} "
                                  "its jobs go to)")
            if "account" not in section:
                raise ConfigError(f"{path}: {kind}: missing required key 'account' (your "
                                  "allocation, or null if the cluster charges none)")
    return site
