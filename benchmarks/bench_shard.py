#!/usr/bin/env python
"""Sharding throughput: N synthetic rows into K cost-balanced shard files.

    python benchmarks/bench_shard.py [--rows 1000000] [--shards 16] [--repeats 3]

Baseline, measured in the same run: one writer process writing the shards in turn.
Prints a Markdown table row for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcxtal.crystal.symmetry import wyckoff_cost_tables
from hpcxtal.store.hdf5 import read_table
from hpcxtal.store.shard import row_cost, write_shards
from hpcxtal.store.table import Table, str_array


def synthetic(n: int, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    _, _, ok = wyckoff_cost_tables()
    n_wp = ok.sum(axis=1)
    spg = rng.integers(1, 231, n)
    n_sites = rng.integers(1, 9, n)
    wps = np.where(np.arange(8) < n_sites[:, None], rng.integers(0, 10**6, (n, 8)) % n_wp[spg][:, None], -1)
    xyz = np.where((wps >= 0)[:, :, None], rng.random((n, 8, 3)), -1.0)
    cell = np.tile([5.0, 5.0, 5.0, 90.0, 90.0, 90.0], (n, 1))
    return Table({"id": np.arange(n, dtype=np.uint64), "spg": spg, "wps": wps, "cell": cell,
                  "xyz": xyz, "origin": str_array(["synthetic"] * n)})


def timed(table: Table, k: int, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        paths = write_shards(table, k, Path(d), workers=workers)
        elapsed = time.perf_counter() - t0
        parts = [read_table(p)[0] for p in paths]
        ids = np.concatenate([p["id"] for p in parts])
        assert len(ids) == len(table) and len(np.unique(ids)) == len(table), "rows lost or duplicated"
        costs = np.array([row_cost(p["spg"], p["wps"]).sum() for p in parts])
        return elapsed, float(costs.max() / costs.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10**6)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    wyckoff_cost_tables()  # built once per process; not part of the timing
    table = synthetic(args.rows)
    cores = len(os.sched_getaffinity(0))
    ours, base, balance = [], [], []
    for _ in range(args.repeats):
        t, b = timed(table, args.shards, cores)
        ours.append(t), balance.append(b)
        base.append(timed(table, args.shards, 1)[0])
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores")
    print(f"| {args.rows:,} rows -> {args.shards} shards | {m_ours:.2f} s ({cores} writers) | "
          f"{m_base:.2f} s (1 writer) | {m_base / m_ours:.2f}x | max/mean cost {max(balance):.4f} |")


if __name__ == "__main__":
    main()
