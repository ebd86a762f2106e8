"""Job-array scripts for per-shard stages, rendered from the templates in ``hpcxtal/jobs/``.

Rendering is a pure function of the site, the stage and the shard list, so a script
can be inspected (``hpcxtal site check``) and compared with a saved copy in tests.
Array task ``k`` runs the ``k``-th line of a shard-list file (lines ``kP+1 .. kP+P`` at
once where a site packs ``P = shards_per_task`` shards per task): resubmitting only the
unfinished shards is just a shorter list.
"""
from __future__ import annotations

import shlex
import sys
from importlib import resources
from pathlib import Path

from hpcxtal.hpc.site import ExecutorSite, SiteConfig

#: Job-script templates shipped as package data.
TEMPLATE_DIR = resources.files("hpcxtal") / "jobs"
TEMPLATES = {"slurm": "slurm_array.sh", "pbs": "pbs_array.sh"}


def default_command() -> str:
    """How a job calls hpcxtal: this interpreter, which clusters share with compute nodes."""
    return f"{shlex.quote(sys.executable)} -m hpcxtal.cli"


def _fill(template: str, values: dict[str, str]) -> str:
    """The template with every ``{{key}}`` replaced; KeyError names one left unfilled."""
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    if "{{" in template:
        missing = template[template.index("{{"):].split("}}")[0] + "}}"
        raise KeyError(f"template placeholder {missing} has no value")
    return template


def _launch(template: str, ex: ExecutorSite, nodes: int = 1, **values: str) -> str:
    """A launch command with its placeholders filled (``ranks``: over ``nodes`` nodes);
    empty stays empty."""
    if not template:
        return ""
    fields = {"cores": str(ex.task_cores()), "ranks_per_node": str(ex.launch.ranks_per_node),
              "ranks": str(nodes * ex.launch.ranks_per_node), "cpus": f"0-{ex.task_cores() - 1}",
              "gpu": "0", "slot": "0", **values}
    return template.format(**fields) + " "


def _packed_lines(ex: ExecutorSite, cli: str, task: str, shard_list: str) -> str:
    """Run lines of an array task that runs ``shards_per_task`` shards at once, each on its
    own block of cores and (GPU nodes) its own GPU, and fails if any of them fails."""
    per, cores = ex.shards_per_task, ex.task_cores()
    gpus = ex.gpus_per_node > 0
    prefix = _launch(ex.launch.shard_command, ex, cpus="$CPUS",
                     gpu="${GPUS[$SLOT]}" if gpus else "$SLOT", slot="$SLOT")
    own = "its own GPU" if ex.task_gpus() == 1 else f"its own {ex.task_gpus()} GPUs"
    lines = [f"# Task k runs shards {per}k+1 .. {per}k+{per} of the shard file (unfinished "
             "shards only) at once,",
             f"# each on its own {cores} cores" + (f" and {own}." if gpus else ".")]
    if gpus:
        lines.append(f"GPUS=({' '.join(ex.worker_gpus())})")
    lines += ["PIDS=()",
              f"for SLOT in $(seq 0 {per - 1}); do",
              f'    SHARD=$(sed -n "$(( ${{{task}}} * {per} + SLOT + 1 ))p" {shard_list})',
              '    [ -n "$SHARD" ] || break',
              f"    CPUS=$(( SLOT * {cores} ))-$(( SLOT * {cores} + {cores - 1} ))",
              f"    {'CUDA_VISIBLE_DEVICES=${GPUS[$SLOT]} ' if gpus else ''}{prefix}{cli} "
              '--shard "$SHARD" &',
              "    PIDS+=($!)",
              "done",
              "STATUS=0",
              'for PID in "${PIDS[@]}"; do wait "$PID" || STATUS=1; done',
              "exit $STATUS"]
    return "\n".join(lines)


def render_job(site: SiteConfig, executor: str, stage: str, campaign: Path, n_tasks: int | None,
               shard_list: Path | None, log_dir: Path, command: str | None = None) -> str:
    """The batch script running ``stage``: an array over the ``n_tasks`` shards listed in
    ``shard_list`` (``shards_per_task`` of them per array task), or (``n_tasks`` None) one
    job for a whole-campaign stage; an MPI stage (rounds) on ``nodes_per_block`` nodes
    with ``launch.ranks_per_node`` ranks each (one per GPU), started by the launcher."""
    from hpcxtal.stages import stage_spec

    if site.scheduler not in TEMPLATES:
        raise ValueError(f"site {site.name!r} has scheduler {site.scheduler!r}; batch jobs need "
                         "slurm or pbs")
    if n_tasks is not None and (n_tasks < 1 or shard_list is None):
        raise ValueError("a job array needs at least one task and a shard list")
    ex = site.executor(executor)
    slurm = site.scheduler == "slurm"
    mpi = n_tasks is None and stage_spec(stage).mpi
    nodes = ex.nodes_per_block if mpi else 1
    if n_tasks is None:
        processes = ex.launch.ranks_per_node if mpi else 1  # per node
        n_array = None
    else:
        processes = min(ex.shards_per_task, n_tasks)
        n_array = -(-n_tasks // ex.shards_per_task)
    cores = ex.task_cores()
    gpus = 1 if mpi else ex.task_gpus()  # per process: an MPI rank has one GPU
    directives: list[str] = []
    if slurm:
        if ex.account:
            directives.append(f"#SBATCH --account={ex.account}")
        if ex.qos:
            directives.append(f"#SBATCH --qos={ex.qos}")
        if nodes > 1:
            directives.append(f"#SBATCH --ntasks-per-node={processes}")
        if ex.mem_per_node_gb:
            share = processes * cores / ex.cores_per_node
            directives.append(f"#SBATCH --mem={int(ex.mem_per_node_gb * 1024 * share)}M")
        if ex.gpus_per_node:
            directives.append(f"#SBATCH --gpus-per-task={gpus}")
        directives += [f"#SBATCH {opt}" for opt in ex.scheduler_options]
    else:
        if ex.account:
            directives.append(f"#PBS -A {ex.account}")
        directives += [f"#PBS {opt}" for opt in ex.scheduler_options]
    array, task = "", ""
    if n_array is not None:
        limit = f"%{ex.max_array_parallel}" if ex.max_array_parallel else ""
        if slurm:
            array = f"#SBATCH --array=0-{n_array - 1}{limit}\n"
            task = "SLURM_ARRAY_TASK_ID"
        elif n_array > 1:  # PBS Pro arrays need at least two indices
            array = f"#PBS -J 0-{n_array - 1}{limit}\n"
            task = "PBS_ARRAY_INDEX"
        else:
            task = "PBS_ARRAY_INDEX:-0"
    cli = f"{command or default_command()} {stage} {shlex.quote(str(campaign))}"
    listed = shlex.quote(str(shard_list))
    if n_tasks is None:
        ranks = nodes * processes
        launch = _launch(ex.mpi_command() or "", ex, nodes) if ranks > 1 else ""
        run_lines = f"exec {launch}{cli}"
        if launch and ex.launch.gpu_order:
            order = ",".join(map(str, ex.gpu_order()))
            run_lines = ("# rank k of a node uses cuda:k, the k-th GPU listed: the one nearest "
                         f"its cores\nexport CUDA_VISIBLE_DEVICES={order}\n{run_lines}")
        what = "one job for the whole campaign" + (
            f" on {ranks} MPI ranks" + (f" over {nodes} nodes" if nodes > 1 else "")
            if ranks > 1 else "")
    elif ex.shards_per_task > 1:
        run_lines = _packed_lines(ex, cli, task, listed)
        what = f"one array task per {ex.shards_per_task} shards"
    else:
        run_lines = ("# Task k runs the k-th shard listed in the shard file (unfinished shards only).\n"
                     f'SHARD=$(sed -n "$(( ${{{task}}} + 1 ))p" {listed})\n'
                     f'exec {_launch(ex.launch.shard_command, ex)}{cli} --shard "$SHARD"')
        what = "one array task per shard"
    queue = ex.queue_for(nodes)
    if queue is None:
        raise ValueError(f"site {site.name!r}: no {executor} queue takes a {nodes}-node job of "
                         f"{ex.walltime}")
    values = {
        "stage": stage, "what": what,
        "campaign": str(campaign),
        "job_name": f"hpcxtal-{stage}",
        "partition": queue,
        "directives": "".join(d + "\n" for d in directives),
        "walltime": ex.walltime,
        "cores": str(cores),
        "nodes": str(nodes),
        "ntasks": str(nodes * processes),
        "job_cores": str(processes * cores),
        "log_dir": str(log_dir),
        "worker_init": ex.worker_init.rstrip("\n"),
        "array_line": array,
        "gpu_select": f":ngpus={processes * gpus}" if ex.gpus_per_node else "",
        "run_lines": run_lines,
        "log_pattern": "%j" if n_tasks is None else "%A_%a",
    }
    return _fill(TEMPLATE_DIR.joinpath(TEMPLATES[site.scheduler]).read_text(), values)
