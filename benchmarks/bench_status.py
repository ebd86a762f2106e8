"""``hpcxtal status`` on a synthetic campaign of many shards (issue 14's target: 2,000
shards in under 5 s).

Builds a campaign directory whose pool, shards and per-shard outputs (refine, rounds,
topology, relax) are small real tables with correct provenance stamps, so every stage
reports done after verifying every file; each shard's files are written by
``write_table`` as a stage run writes them, one ``written/`` note per shard and stage as
one array task leaves it (the same rows in every shard: the same checksums, which is all
``status`` needs). Then times the ``hpcxtal status`` command as a whole process, three
ways: after the runs (no ledger yet; the runs' ``written/`` notes), cold (no ledger, no
notes: every file read and hashed once) and warm (the ledger of the call before).

    python benchmarks/bench_status.py --shards 2000 --runs 3 --dir /tmp/status-bench
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hpcxtal.campaign import Campaign, CampaignConfig
from hpcxtal.generate.config import SampleConfig
from hpcxtal.layout import dedup_output, ledger_path, shard_path, stage_output
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.provenance import PROVENANCE, Provenance
from hpcxtal.store.shard import ShardConfig

from benchlib import finish, machine


def build(root: Path, n_shards: int) -> Campaign:
    """The synthetic campaign: every stage up to relax complete and current."""
    if root.exists():
        shutil.rmtree(root)
    cfg = CampaignConfig(name="status-bench", sample=SampleConfig(n=3 * n_shards),
                         shard=ShardConfig(n_shards=n_shards))
    campaign = Campaign.create(root, cfg)
    sacada, _ = read_table(Path(__file__).resolve().parents[1] / "hpcxtal" / "data"
                           / "sacada_sp2.h5")
    rows = sacada.take(np.arange(3))
    rows.structures = None
    write_table(campaign.pool_path, rows, kind="pool")
    prov = Provenance()
    cfg = campaign.config
    steps = [("refine", cfg.refine),
             ("rounds", {"refine": cfg.refine, "rounds": cfg.rounds}),
             ("topology", cfg.topology)]
    ledger = ledger_path(root)

    def write(dest: Path, kind: str, sources: list[Path], science: object) -> None:
        """One output as a stage run leaves it: the file and its note for status."""
        write_table(dest, rows, kind=kind, **prov.stamp(sources, science))
        PROVENANCE.save_written(ledger, root)

    for i in range(n_shards):
        previous = shard_path(campaign.shard_dir, i)
        write(previous, "shard", [campaign.pool_path], cfg.shard)
        for stage, science in steps:
            write(stage_output(stage, root, i), stage, [previous], science)
            previous = stage_output(stage, root, i)
    topology = [stage_output("topology", root, i) for i in range(n_shards)]
    write(dedup_output(root), "dedup", topology, cfg.topology)
    for i in range(n_shards):
        write(stage_output("relax", root, i), "relax", [topology[i], dedup_output(root)], cfg.relax)
    return campaign


def status_seconds(root: Path) -> float:
    """Wall time of one ``hpcxtal status DIR`` process; it must report every stage done."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hpcxtal.cli", "status", str(root)],
                         capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - t0
    for stage in ("sample", "shard", "refine", "rounds", "topology", "dedup", "relax"):
        line = next(l for l in out.splitlines() if l.strip().startswith(stage))
        assert "done" in line, out
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3, help="cold and warm calls each")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hpcxtal-status-bench"))
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    t0 = time.perf_counter()
    build(args.dir, args.shards)
    built = time.perf_counter() - t0
    ledger = ledger_path(args.dir)
    notes = ledger.with_name("written")
    kept = args.dir.parent / f"{args.dir.name}-written"
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(notes, kept)
    after_run, cold, warm = [], [], []
    for _ in range(args.runs):
        ledger.unlink(missing_ok=True)
        shutil.rmtree(notes, ignore_errors=True)
        shutil.copytree(kept, notes)
        after_run.append(status_seconds(args.dir))
        assert not any(notes.glob("*.json")), "status folds the notes into its ledger"
        ledger.unlink()
        cold.append(status_seconds(args.dir))
        warm.append(status_seconds(args.dir))
    files = sum(1 for _ in args.dir.rglob("*.h5"))
    finish({"benchmark": "status", "machine": machine(1), "shards": args.shards,
            "files": files, "notes": sum(1 for _ in kept.glob("*.json")),
            "build_s": round(built, 1), "after_run_s": after_run, "cold_s": cold, "warm_s": warm,
            "after_run_median_s": statistics.median(after_run),
            "cold_median_s": statistics.median(cold), "warm_median_s": statistics.median(warm),
            "cold_over_warm": statistics.median(cold) / statistics.median(warm)}, args.json)


if __name__ == "__main__":
    main()
