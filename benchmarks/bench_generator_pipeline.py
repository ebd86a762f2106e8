#!/usr/bin/env python
"""Every generator through the same campaign: refinement, rounds, topology, relaxation,
post-relax screening; per model CN=3-valid, unique, new, low-energy, and the overlaps.

    python benchmarks/bench_generator_pipeline.py --model cvae=default \\
        --model gan-dis=build/gen/gan-dis.pt --samples 100 --dir build/gen/pipe \\
        [--config benchmarks/campaign_1k.yaml] [--json benchmarks/results/x.json]

One campaign per model (``DIR/NAME``): the settings of ``--config`` (default the
issue-16 benchmark campaign: refine 600 steps, 2 rounds, the shipped small carbon MACE
at fmax 0.15 eV/Å, 80 steps, relaxing topology representatives of the CN-valid rows
only) with ``sample: {n: --samples, model: PATH}``, seed ``--seed``, and no rescoring
tier (``--rescore`` keeps the config's). Each runs with ``hpcxtal run`` (the local site).
From each database (:func:`hpcxtal.report.metrics`, after the post-relax checks):
N_valid_env (relaxed structure keeps CN = 3), N_unique (own representative, 3-D, motif
kept), N_new, N_low_E (unique within 0.55 eV/atom of graphite), N_low_E_cubic, and the
number of distinct relaxed topology keys among the unique rows; overlaps = relaxed
topology keys of unique rows two models share. Wall time per model (``hpcxtal run``
and its Parsl workers; their CPU time is not collected). A campaign that already ran
is not run again (its stages verify and are skipped), so a second call with all models
prints the joint tables. Prints Markdown tables; ``--json`` keeps the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from benchlib import finish, machine
from hpcxtal.campaign import Campaign, CampaignConfig
from hpcxtal.generate.config import SampleConfig
from hpcxtal.merge.database import read_database
from hpcxtal.report import metrics

ROOT = Path(__file__).resolve().parents[1]


def run_campaign(name: str, model: str, args) -> tuple[dict, set[str], set[str], float]:
    """(headline counts, relaxed keys of the unique rows, of the new rows, wall s)."""
    cfg = CampaignConfig.from_file(args.config)
    cfg = dataclasses.replace(cfg, name=f"gen-{name}", seed=args.seed,
                              sample=SampleConfig(n=args.samples, model=model, conditions="mix"),
                              rescore=cfg.rescore if args.rescore else None)
    root = Path(args.dir) / name
    if not (root / "campaign.yaml").exists():
        Campaign.create(root, cfg)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "hpcxtal.cli", "run", str(root), "-q"], check=True, env=env)
    wall = time.perf_counter() - t0
    table, quarantine = read_database(root / "database.h5")
    m = metrics(table, len(table) + len(quarantine))
    unique = np.asarray(table["unique"], bool)
    new = table["class"] == "new"
    keys = {str(k) for k in table["topology_relaxed"][unique] if k}
    new_keys = {str(k) for k in table["topology_relaxed"][new] if k}
    counts = {k: m[k] for k in ("N_sampled", "N_valid_xtal", "N_valid_env", "N_unique", "N_train",
                                "N_low_E", "N_low_E_cubic", "N_new", "N_new_low_E")}
    counts["N_valid_env_before"] = m["before"]["N_valid_env"]
    counts["distinct_keys"] = len(keys)
    return counts, keys, new_keys, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                    help="a model file ('default': the shipped CVAE); repeat for each")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", required=True, help="where the campaigns go (one per model)")
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "campaign_1k.yaml"))
    ap.add_argument("--rescore", action="store_true", help="keep the config's rescoring tier")
    ap.add_argument("--json")
    args = ap.parse_args()
    report = {"machine": machine(1), "samples": args.samples, "seed": args.seed,
              "config": args.config, "rescore": args.rescore, "models": {}}
    keys, new_keys = {}, {}
    for item in args.model:
        name, _, path = item.partition("=")
        counts, keys[name], new_keys[name], wall = run_campaign(name, path, args)
        report["models"][name] = {**counts, "wall_s": round(wall)}
        print(f"{name}: {counts} ({wall:.0f} s wall)", flush=True)
    report["overlap_unique_keys"] = {f"{a}|{b}": len(keys[a] & keys[b])
                                     for a, b in combinations(keys, 2)}
    report["overlap_new_keys"] = {f"{a}|{b}": len(new_keys[a] & new_keys[b])
                                  for a, b in combinations(new_keys, 2)}
    n = args.samples
    print(f"\n| model | sampled | CN=3 valid after refinement | relaxed keeps CN=3 | unique | "
          f"distinct keys | new | low-E (<= 0.55 eV/atom) | low-E cubic | per 100: valid / unique / low-E "
          f"| wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in report["models"].items():
        print(f"| {name} | {r['N_sampled']} | {r['N_valid_env_before']} | {r['N_valid_env']} | "
              f"{r['N_unique']} | {r['distinct_keys']} | {r['N_new']} | {r['N_low_E']} | "
              f"{r['N_low_E_cubic']} | {100 * r['N_valid_env_before'] / n:.0f} / "
              f"{100 * r['N_unique'] / n:.0f} / {100 * r['N_low_E'] / n:.0f} | "
              f"{r['wall_s']} s |")
    names = list(keys)
    print("\nShared relaxed topology keys of unique structures (diagonal: the model's own):\n")
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for a in names:
        print(f"| {a} | " + " | ".join(str(len(keys[a] & keys[b])) for b in names) + " |")
    finish(report, args.json)


if __name__ == "__main__":
    main()
