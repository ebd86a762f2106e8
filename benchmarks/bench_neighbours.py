"""What a Verlet list saves: the neighbour search of a batch built anew (as every call
did before) against a kept list checked and filtered, beside one model call on the same
batch, all in this process (1 torch thread).

    PYTHONPATH=. python benchmarks/bench_neighbours.py --json neighbours.json
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from bench_relax import pick
from benchlib import finish, machine


def per_call_ms(fn, repeat: int) -> float:
    """Median CPU milliseconds of ``fn()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    from hpcxtal.data import sacada_structures
    from hpcxtal.relax.models import load_model
    from hpcxtal.relax.neighbours import VerletLists, fresh_edges

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(neighbour_skin_A=0.0)
    images = pick(sacada_structures(), 100, 24)
    report = {"machine": machine(1), "cutoff_A": model.cutoff, "skin_A": 1.0,
              "load_before": os.getloadavg(), "batches": []}
    for batch in (images[:6], images[8:13], images[-3:]):
        pos = torch.tensor(np.concatenate([a.positions for a in batch]))
        cells = torch.tensor(np.array([np.asarray(a.cell) for a in batch]))
        index = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([len(a) for a in batch]))
        keys = list(range(len(batch)))
        lists = VerletLists(model.cutoff, 1.0)
        lists.edges(keys, pos, cells, index)
        moved = pos + 0.01  # a small step: every list stays valid
        row = {"atoms": len(pos), "structures": len(batch),
               "fresh_ms": per_call_ms(lambda: fresh_edges(moved, cells, index, model.cutoff), args.repeat),
               "reuse_ms": per_call_ms(lambda: lists.edges(keys, moved, cells, index), args.repeat),
               "model_call_ms": per_call_ms(lambda: model(moved, torch.tensor(
                   np.concatenate([a.numbers for a in batch])), cells, index), args.repeat)}
        row["saved_share_of_call"] = (row["fresh_ms"] - row["reuse_ms"]) / row["model_call_ms"]
        report["batches"].append(row)
        print(row, flush=True)
    finish(report, args.json)


if __name__ == "__main__":
    main()
