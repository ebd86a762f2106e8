"""Site commands: validate a site config and show what it would submit."""
from __future__ import annotations

import argparse
from pathlib import Path

from hpcxtal.cli.common import add_common


def cmd_site(args: argparse.Namespace) -> int:
    from hpcxtal.hpc.jobs import render_job
    from hpcxtal.hpc.site import load_site, site_path

    path = site_path(args.site)
    site = load_site(path)
    print(f"{path}: site {site.name!r}, scheduler {site.scheduler}, "
          f"HDF5 file locking {'on' if site.hdf5_file_locking else 'off'}: valid")
    for kind, example in (("gpu", "refine"), ("cpu", "relax")):
        ex = site.executor(kind)
        print(f"\n{kind} executor: partition {ex.partition or '-'}, account {ex.account or '-'}, "
              f"{ex.nodes_per_block} node(s) x {ex.max_blocks} block(s), {ex.cores_per_node} "
              f"cores and {ex.gpus_per_node} GPUs per node, walltime {ex.walltime}, "
              f"launcher {ex.launcher}")
        if site.scheduler == "local":
            print("  runs on this machine: no batch script")
            continue
        camp = Path("CAMPAIGN").resolve()
        print(f"  a 4-shard {example} array would submit:\n")
        script = render_job(site, kind, example, camp, 4, camp / "jobs" / f"{example}-shards.txt",
                              camp / "jobs" / "logs")
        print("    " + script.replace("\n", "\n    ").rstrip())
    return 0



def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The site commands' parsers."""
    p = sub.add_parser("site", help="site configs: validate and show what would be submitted",
                       description="Site configs (site_configs/*.yaml) say where stages run.")
    site_sub = p.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    q = site_sub.add_parser("check", help="validate a site config and print its job scripts",
                            description="Validate a site config (a path, or a name looked up "
                                        "in site_configs/) and print the batch script each "
                                        "executor would submit for a 4-shard array.")
    q.add_argument("site", help="site name (e.g. local, slurm_generic) or YAML path")
    q.set_defaults(func=cmd_site)
    add_common(q)
