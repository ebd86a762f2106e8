"""Job-array scripts for per-shard stages, rendered from the templates in ``jobs/``.

Rendering is a pure function of the site, the stage and the shard list, so a script
can be inspected (``hpcxtal site check``) and compared with a saved copy in tests.
Array task ``k`` runs the ``k``-th line of a shard-list file: resubmitting only the
unfinished shards is just a shorter list.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from hpcxtal.hpc.site import SiteConfig

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "jobs"
TEMPLATES = {"slurm": "slurm_array.sh", "pbs": "pbs_array.sh"}


def default_command() -> str:
    """How a job calls hpcxtal: this interpreter, which clusters share with compute nodes."""
    return f"{shlex.quote(sys.executable)} -m hpcxtal.cli"


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    if "{{" in template:
        missing = template[template.index("{{"):].split("}}")[0] + "}}"
        raise KeyError(f"template placeholder {missing} has no value")
    return template


def render_array(site: SiteConfig, executor: str, stage: str, campaign: Path, n_tasks: int,
                 shard_list: Path, log_dir: Path, command: str | None = None) -> str:
    """The batch script running ``stage`` over ``n_tasks`` shards listed in ``shard_list``."""
    if site.scheduler not in TEMPLATES:
        raise ValueError(f"site {site.name!r} has scheduler {site.scheduler!r}; job arrays need "
                         "slurm or pbs")
    if n_tasks < 1:
        raise ValueError("a job array needs at least one task")
    ex = site.executor(executor)
    directives: list[str] = []
    if site.scheduler == "slurm":
        if ex.account:
            directives.append(f"#SBATCH --account={ex.account}")
        if ex.qos:
            directives.append(f"#SBATCH --qos={ex.qos}")
        if ex.mem_per_node_gb:
            share = ex.task_cores() / ex.cores_per_node
            directives.append(f"#SBATCH --mem={int(ex.mem_per_node_gb * 1024 * share)}M")
        if ex.gpus_per_node:
            directives.append("#SBATCH --gpus-per-task=1")
        directives += [f"#SBATCH {opt}" for opt in ex.scheduler_options]
        array_limit = f"%{ex.max_array_parallel}" if ex.max_array_parallel else ""
        extra = {"array_limit": array_limit, "last_task": str(n_tasks - 1)}
    else:
        if ex.account:
            directives.append(f"#PBS -A {ex.account}")
        directives += [f"#PBS {opt}" for opt in ex.scheduler_options]
        # PBS Pro arrays need at least two indices; one shard runs as a plain job.
        array = f"#PBS -J 0-{n_tasks - 1}" if n_tasks > 1 else ""
        if array and ex.max_array_parallel:
            array += f"%{ex.max_array_parallel}"
        gpus = ":ngpus=1" if ex.gpus_per_node else ""
        extra = {"array_line": array + "\n" if array else "", "gpu_select": gpus}
    template = (TEMPLATE_DIR / TEMPLATES[site.scheduler]).read_text()
    values = {
        "stage": stage,
        "campaign": shlex.quote(str(campaign)),
        "job_name": f"hpcxtal-{stage}",
        "partition": ex.partition or "",
        "directives": "".join(d + "\n" for d in directives),
        "walltime": ex.walltime,
        "cores": str(ex.task_cores()),
        "log_dir": str(log_dir),
        "worker_init": ex.worker_init.rstrip("\n"),
        "shard_list": shlex.quote(str(shard_list)),
        "command": command or default_command(),
        **extra,
    }
    return _fill(template, values)
