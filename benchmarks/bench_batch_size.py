"""Cost per atom of one batched model call (energy, forces, stress: one FIRE step)
against the batch's size in neighbour pairs (edges), for choosing the relax stage's
default ``batch_edge_budget`` on a CPU.

Batches are filled with SACADA structures of at most 100 atoms, visited in a fixed
pseudo-random order and added while they fit the edge target; each batch is timed
over enough repeats to reach about 40,000 edge-evaluations; the whole sweep runs
``--runs`` times and the median ms/atom of each size is reported.

    PYTHONPATH=. python benchmarks/bench_batch_size.py --threads 2 --dtype float64 \\
        --json benchmarks/results/batch-size.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from benchlib import finish, machine

TARGETS = (500, 1500, 3000, 4500, 6000, 9000, 20000, 40000, 80000)


def fill(edges, target: int) -> list[int]:
    """Indices of structures, visited in a fixed stride through the set, added while
    their edges still fit ``target`` (the smallest structure if none fits)."""
    chosen, total = [], 0
    for k in range(len(edges)):
        j = (k * 37) % len(edges)
        if total + edges[j] <= target:
            chosen.append(j)
            total += edges[j]
    return chosen or [min(range(len(edges)), key=edges.__getitem__)]


def main() -> None:
    from hpcxtal.data import sacada_structures
    from hpcxtal.relax.engine import _edge_count
    from hpcxtal.relax.models import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="mace")
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()

    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    model = load_model(args.backend, args.model, args.dtype)
    images = [a for a in sacada_structures() if len(a) <= 100]
    edges = [_edge_count(a, model.cutoff) for a in images]
    batches = {t: fill(edges, t) for t in TARGETS}
    timings: dict[int, list[float]] = {t: [] for t in TARGETS}
    for run in range(args.runs):
        for t, idx in batches.items():
            batch = [images[j] for j in idx]
            model.evaluate(batch)  # warm-up
            n_edges = sum(edges[j] for j in idx)
            reps = max(2, 40000 // n_edges)
            t0 = time.perf_counter()
            for _ in range(reps):
                model.evaluate(batch)
            timings[t].append((time.perf_counter() - t0) / reps / sum(len(a) for a in batch) * 1e3)
        print(f"run {run}: " + ", ".join(f"{t}: {v[-1]:.2f}" for t, v in timings.items()), flush=True)
    rows = [{"edge_target": t, "structures": len(idx), "atoms": sum(len(images[j]) for j in idx),
             "edges": sum(edges[j] for j in idx), "ms_per_atom": timings[t],
             "median_ms_per_atom": statistics.median(timings[t])} for t, idx in batches.items()]
    for r in rows:
        print(f"{r['edges']:6d} edges {r['atoms']:5d} atoms {r['structures']:3d} structures: "
              f"{r['median_ms_per_atom']:.3f} ms/atom")
    finish({"machine": machine(args.threads), "model": model.describe(), "runs": args.runs,
            "rows": rows, "load_before": load_before}, args.json)


if __name__ == "__main__":
    main()
