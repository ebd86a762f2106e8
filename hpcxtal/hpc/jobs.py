"""Job-array scripts for per-shard stages, rendered from the templates in ``hpcxtal/jobs/``.

Rendering is a pure function of the site, the stage and the shard list, so a script
can be inspected (``hpcxtal site check``) and compared with a saved copy in tests.
Array task ``k`` runs the ``k``-th line of a shard-list file: resubmitting only the
unfinished shards is just a shorter list.
"""
from __future__ import annotations

import shlex
import sys
from importlib import resources
from pathlib import Path

from hpcxtal.hpc.site import SiteConfig

#: Job-script templates shipped as package data.
TEMPLATE_DIR = resources.files("hpcxtal") / "jobs"
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


def render_job(site: SiteConfig, executor: str, stage: str, campaign: Path, n_tasks: int | None,
               shard_list: Path | None, log_dir: Path, command: str | None = None) -> str:
    """The batch script running ``stage``: an array over ``n_tasks`` shards listed in
    ``shard_list``, or (``n_tasks`` None) one job for a whole-campaign stage."""
    if site.scheduler not in TEMPLATES:
        raise ValueError(f"site {site.name!r} has scheduler {site.scheduler!r}; batch jobs need "
                         "slurm or pbs")
    if n_tasks is not None and (n_tasks < 1 or shard_list is None):
        raise ValueError("a job array needs at least one task and a shard list")
    ex = site.executor(executor)
    slurm = site.scheduler == "slurm"
    directives: list[str] = []
    if slurm:
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
    else:
        if ex.account:
            directives.append(f"#PBS -A {ex.account}")
        directives += [f"#PBS {opt}" for opt in ex.scheduler_options]
    array, task = "", ""
    if n_tasks is not None:
        limit = f"%{ex.max_array_parallel}" if ex.max_array_parallel else ""
        if slurm:
            array = f"#SBATCH --array=0-{n_tasks - 1}{limit}\n"
            task = "SLURM_ARRAY_TASK_ID"
        elif n_tasks > 1:  # PBS Pro arrays need at least two indices
            array = f"#PBS -J 0-{n_tasks - 1}{limit}\n"
            task = "PBS_ARRAY_INDEX"
        else:
            task = "PBS_ARRAY_INDEX:-0"
    cli = f"{command or default_command()} {stage} {shlex.quote(str(campaign))}"
    if n_tasks is None:
        run_lines = f"exec {cli}"
        what = "one job for the whole campaign"
    else:
        run_lines = ("# Task k runs the k-th shard listed in the shard file (unfinished shards only).\n"
                     f'SHARD=$(sed -n "$(( ${{{task}}} + 1 ))p" {shlex.quote(str(shard_list))})\n'
                     f'exec {cli} --shard "$SHARD"')
        what = "one array task per shard"
    values = {
        "stage": stage, "what": what,
        "campaign": str(campaign),
        "job_name": f"hpcxtal-{stage}",
        "partition": ex.partition or "",
        "directives": "".join(d + "\n" for d in directives),
        "walltime": ex.walltime,
        "cores": str(ex.task_cores()),
        "log_dir": str(log_dir),
        "worker_init": ex.worker_init.rstrip("\n"),
        "array_line": array,
        "gpu_select": ":ngpus=1" if ex.gpus_per_node else "",
        "run_lines": run_lines,
        "log_pattern": "%j" if n_tasks is None else "%A_%a",
    }
    return _fill((TEMPLATE_DIR / TEMPLATES[site.scheduler]).read_text(), values)
