#!/usr/bin/env python
"""The rounds stage as a submitted MPI job with 1, 2 and 4 ranks on the two-node test bed
(scripts/local_slurm_multinode.sh): wall time of the job and identical results.

    sudo scripts/local_slurm_multinode.sh start
    SLURM_CONF=/tmp/hpcxtal-slurm-multi/slurm.conf PYTHONPATH=. python \\
        benchmarks/bench_rounds_ranks.py --rows 80 --shards 4 --rounds 3 --repeats 3 \\
        --json benchmarks/results/rounds-ranks.json

One campaign (``--rows`` rows of the shared generated candidates, ``--shards`` shards,
refinement capped at ``--max-steps`` steps, ``--rounds`` rounds) is imported, sharded and
refined (round 1) in this process. Then, for each layout (1 rank on 1 node, 2 ranks on 2
nodes, 4 ranks on 2 nodes), ``--repeats`` times: the rounds outputs and parts are removed
and ``hpcxtal submit DIR --stage rounds`` submits one job on a site of that layout (a
copy of ``local_slurm_multinode`` in the campaign folder). The job's time is its own
``RunTime`` (SLURM, whole seconds: interpreter start-up and MPI start included, queueing
not), with the load average at submission. Each run's per-shard rounds files are
compared with the 1-rank run's: the valid set (id, round, valid), every column, and the
largest difference of a cell or coordinate value.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared" / "data" / "generated_candidates_1k.csv"
LAYOUTS = ((1, 1), (2, 1), (2, 2))  # (nodes, ranks per node)


def _site(nodes: int, per_node: int) -> str:
    """The test bed's site with rounds on ``nodes`` x ``per_node`` ranks."""
    from hpcxtal.hpc.site import SHIPPED_SITE_DIR

    text = (SHIPPED_SITE_DIR / "local_slurm_multinode.yaml").read_text()
    text = text.replace("name: local_slurm_multinode", f"name: bench_r{nodes * per_node}")
    text = text.replace("  nodes_per_block: 2 ", f"  nodes_per_block: {nodes} ")
    text = text.replace("  cores_per_node: 1\n  gpus_per_node: 0",
                        f"  cores_per_node: {per_node}\n  cores_per_task: 1\n  gpus_per_node: 0")
    return text.replace("    ranks_per_node: 1", f"    ranks_per_node: {per_node}")


def _run_time(job: str) -> tuple[str, int]:
    """The finished job's state and RunTime in seconds (waits while it is queued or runs)."""
    while True:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                             text=True, check=True).stdout
        state = re.search(r"JobState=(\S+)", out).group(1)
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            h, m, s = (int(x) for x in re.search(r"RunTime=(?:\d+-)?(\S+)", out).group(1).split(":"))
            return state, h * 3600 + m * 60 + s
        time.sleep(1)


def _tables(camp: Path, shards: int) -> list:
    from hpcxtal.layout import stage_output
    from hpcxtal.store.hdf5 import read_table

    return [read_table(stage_output("rounds", camp, i))[0] for i in range(shards)]


def _compare(a: list, b: list) -> dict:
    """How the per-shard rounds tables ``a`` and ``b`` agree: the valid set (id, round,
    valid) identical, every column identical, and the largest coordinate difference."""
    valid = all(np.array_equal(ta[k], tb[k]) for ta, tb in zip(a, b)
                for k in ("id", "round", "valid"))
    columns = all(ta.columns.keys() == tb.columns.keys() and
                  all(np.array_equal(c, tb.columns[k], equal_nan=c.dtype.kind in "fc")
                      for k, c in ta.columns.items())
                  for ta, tb in zip(a, b))
    coords = max(float(np.nanmax(np.abs(ta[k] - tb[k]), initial=0.0))
                 for ta, tb in zip(a, b) for k in ("cell", "xyz"))
    return {"valid_set_identical": valid, "all_columns_identical": columns,
            "max_coordinate_diff": coords}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=80)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("build/bench-rounds-ranks"))
    ap.add_argument("--json")
    args = ap.parse_args()

    from hpcxtal.cli import main as cli

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    csv = args.work / "rows.csv"
    csv.write_text("\n".join(SHARED.read_text().splitlines()[:args.rows + 1]) + "\n")
    camp = args.work / "camp"
    cfg = args.work / "c.yaml"
    cfg.write_text(f"name: bench\nsite: local_slurm_multinode\nimport:\n  inputs: [{csv}]\n"
                   f"shard:\n  n_shards: {args.shards}\nrefine:\n  max_steps: {args.max_steps}\n"
                   f"rounds:\n  n_rounds: {args.rounds}\n")
    assert cli(["init", str(camp), "--config", str(cfg), "-q"]) == 0
    for stage in ("import", "shard"):
        assert cli([stage, str(camp), "-q"]) == 0
    for i in range(args.shards):
        assert cli(["refine", str(camp), "--shard", str(i), "-q"]) == 0
    results, reference = [], None
    for nodes, per_node in LAYOUTS:
        ranks = nodes * per_node
        name = f"bench_r{ranks}"
        (camp / f"{name}.yaml").write_text(_site(nodes, per_node))
        text = (camp / "campaign.yaml").read_text()
        (camp / "campaign.yaml").write_text(re.sub(r"(?m)^site: .*$", f"site: {name}", text))
        seconds = []
        for _ in range(args.repeats):
            shutil.rmtree(camp / "rounds", ignore_errors=True)
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, "-m", "hpcxtal.cli", "submit", str(camp),
                                   "--stage", "rounds", "-q"], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            job = json.loads((camp / "jobs" / "submitted.json").read_text())[-1]["job_id"]
            state, run_s = _run_time(job)
            assert state == "COMPLETED", (job, state)
            tables = _tables(camp, args.shards)
            reference = reference or tables
            seconds.append({"run_s": run_s, "load_at_submit": load,
                            **_compare(tables, reference)})
            print(f"{ranks} rank(s) on {nodes} node(s): {run_s} s (load {load:.2f}), "
                  f"vs 1 rank: {_compare(tables, reference)}", flush=True)
        results.append({"ranks": ranks, "nodes": nodes, "runs": seconds,
                        "median_s": statistics.median(r["run_s"] for r in seconds)})
    base = results[0]["median_s"]
    print("\n| ranks | nodes | RunTime median (s) | runs (s) | vs 1 rank | valid set as 1 rank "
          "| all columns as 1 rank | max coordinate difference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        runs = r["runs"]
        print(f"| {r['ranks']} | {r['nodes']} | {r['median_s']} | "
              f"{', '.join(str(x['run_s']) for x in runs)} | {r['median_s'] / base:.2f}x | "
              f"{all(x['valid_set_identical'] for x in runs)} | "
              f"{all(x['all_columns_identical'] for x in runs)} | "
              f"{max(x['max_coordinate_diff'] for x in runs):.2g} |")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count(),
              "results": results, "load_after": os.getloadavg()}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
