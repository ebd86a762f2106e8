"""Site commands: validate a site config and show what it would submit."""
from __future__ import annotations

import argparse
from pathlib import Path

from hpcxtal.cli.common import command, group


def placement_rows(site) -> list[tuple[str, ...]]:
    """One row per pipeline stage: where it runs on ``site`` (executor, partition or
    queue of its jobs), how many processes per node and the GPUs and cores of each."""
    from hpcxtal.stages import PIPELINE

    rows = [("stage", "executor", "partition", "per node", "GPUs each", "cores each")]
    for spec in PIPELINE:
        kind = site.stage_executor(spec.name)
        ex = site.executor(kind)
        if spec.mpi:
            nodes = ex.nodes_per_block
            per_node = f"{ex.launch.ranks_per_node} MPI ranks x {nodes} node(s)"
            gpus = 1 if ex.gpus_per_node else 0
        elif spec.per_shard:
            nodes = 1
            per_node = (f"{ex.shards_per_task} shard(s) per array task, "
                        f"{ex.workers_per_node()} Parsl workers")
            gpus = ex.task_gpus()
        else:
            nodes, per_node, gpus = 1, "1 process", ex.task_gpus()
        queue = ex.queue_for(nodes) or "-" if site.scheduler != "local" else "(this machine)"
        rows.append((spec.name, kind, queue, per_node, str(gpus), str(ex.task_cores())))
    return rows


def print_table(rows: list[tuple[str, ...]], indent: str = "  ") -> None:
    """``rows`` (the first a header) as aligned columns."""
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for row in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def cmd_site(args: argparse.Namespace) -> int:
    """Validate a site config and print where stages run and its job scripts.

    Validate a site config (a path, or a name looked up in ./site_configs, $HPCXTAL_SITE_DIR
    and the shipped sites), name the MPI library mpi4py is bound to, and print which stage
    runs on which executor and partition with how many processes (shards, workers or MPI
    ranks) per node and GPUs each, then the batch script each executor would submit.
    Without a site: that table for every shipped site.
    """
    from hpcxtal.hpc.jobs import render_job
    from hpcxtal.hpc.mpi import mpi_library
    from hpcxtal.hpc.site import load_site, shipped_sites, site_path

    if args.site is None:
        for name in shipped_sites():
            site = load_site(name)
            print(f"{name} ({site.scheduler}):")
            print_table(placement_rows(site))
            print()
        return 0
    path = site_path(args.site)
    site = load_site(path)
    print(f"{path}: site {site.name!r}, scheduler {site.scheduler}, "
          f"HDF5 file locking {'on' if site.hdf5_file_locking else 'off'}: valid")
    print(f"MPI here: {mpi_library()}")
    print("\nwhere each stage runs:")
    print_table(placement_rows(site))
    for kind, example in (("gpu", "refine"), ("cpu", "relax")):
        ex = site.executor(kind)
        queues = (f"queue {ex.queue_for(1)} for array tasks, {ex.queue_for(ex.nodes_per_block)} "
                  f"for {ex.nodes_per_block}-node Parsl blocks" if ex.queues
                  else f"partition {ex.partition or '-'}")
        print(f"\n{kind} executor: {queues}, account {ex.account or '-'}, "
              f"{ex.nodes_per_block} node(s) x {ex.max_blocks} block(s), {ex.cores_per_node} "
              f"cores and {ex.gpus_per_node} GPUs per node, {ex.task_gpus()} GPU(s) per worker, "
              f"{ex.shards_per_task} shard(s) per array task, walltime {ex.walltime}, "
              f"launcher {ex.launcher}")
        if site.scheduler == "local":
            print("  runs on this machine: no batch script")
            continue
        camp = Path("CAMPAIGN").resolve()
        n = max(4, 2 * ex.shards_per_task)
        print(f"  a {n}-shard {example} array would submit:\n")
        script = render_job(site, kind, example, camp, n, camp / "jobs" / f"{example}-shards.txt",
                            camp / "jobs" / "logs")
        print("    " + script.replace("\n", "\n    ").rstrip())
    return 0



def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The site commands' parsers."""
    site_sub = group(sub, "site", "Site configs: validate and show what would be submitted",
                     "Site configs (YAML) say where stages run: shipped ones, yours in "
                     "$HPCXTAL_SITE_DIR or the campaign directory.", dest="site_action")
    q = command(site_sub, "check", cmd_site)
    q.add_argument("site", nargs="?", default=None,
                   help="site name (e.g. local, slurm_generic) or YAML path; omit for all "
                        "shipped sites")
