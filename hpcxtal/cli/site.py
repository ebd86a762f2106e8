"""Site commands: validate a site config and show what it would submit."""
from __future__ import annotations

import argparse
from pathlib import Path

from hpcxtal.cli.common import command


def cmd_site(args: argparse.Namespace) -> int:
    """Validate a site config and print its job scripts.

    Validate a site config (a path, or a name looked up in ./site_configs, $HPCXTAL_SITE_DIR
    and the shipped sites), name the MPI library mpi4py is bound to and print the batch
    script each executor would submit.
    """
    from hpcxtal.hpc.jobs import render_job
    from hpcxtal.hpc.mpi import mpi_library
    from hpcxtal.hpc.site import load_site, site_path

    path = site_path(args.site)
    site = load_site(path)
    print(f"{path}: site {site.name!r}, scheduler {site.scheduler}, "
          f"HDF5 file locking {'on' if site.hdf5_file_locking else 'off'}: valid")
    print(f"MPI here: {mpi_library()}")
    for kind, example in (("gpu", "refine"), ("cpu", "relax")):
        ex = site.executor(kind)
        queues = (f"queue {ex.queue_for(1)} for array tasks, {ex.queue_for(ex.nodes_per_block)} "
                  f"for {ex.nodes_per_block}-node Parsl blocks" if ex.queues
                  else f"partition {ex.partition or '-'}")
        print(f"\n{kind} executor: {queues}, account {ex.account or '-'}, "
              f"{ex.nodes_per_block} node(s) x {ex.max_blocks} block(s), {ex.cores_per_node} "
              f"cores and {ex.gpus_per_node} GPUs per node, {ex.shards_per_task} shard(s) per "
              f"array task, walltime {ex.walltime}, launcher {ex.launcher}")
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
    p = sub.add_parser("site", help="Site configs: validate and show what would be submitted",
                       description="Site configs (YAML) say where stages run: shipped ones, "
                                   "yours in $HPCXTAL_SITE_DIR or the campaign directory.")
    site_sub = p.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    q = command(site_sub, "check", cmd_site)
    q.add_argument("site", help="site name (e.g. local, slurm_generic) or YAML path")
