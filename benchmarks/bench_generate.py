#!/usr/bin/env python
"""Generator figures: augmentation, training, model size, sampled-candidate validity,
CVAE vs unconditional VAE.

    python benchmarks/bench_generate.py --training TRAIN.h5 --cvae MODEL.pt --vae VAE.pt \\
        [--samples 1000] [--repeats 3]

TRAIN.h5 comes from ``hpcxtal prepare`` (its attributes carry the augmentation time),
the models from ``hpcxtal train`` (their files carry the training wall time). Both
models are sampled with the same number of candidates, the same seeds and the same
post-processing (``hpcxtal.crystal.row.decode``, then spglib at 0.01 Å):

- decoded: the row decodes (consistent condition, finite cell within limits);
- stated symmetry: spglib finds exactly the row's space group;
- no overlap: no two atoms closer than 0.9 Å;
- unique: distinct by (space group, primitive atom count, volume/atom to 0.01 Å^3,
  reduced primitive lengths to 0.01 Å) among the valid ones (a cheap key, not a full
  StructureMatcher de-duplication).

Sampling time is the median of ``--repeats`` runs (each repeat uses its own seed; the
counts are the sums over repeats). Prints Markdown for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from hpcxtal.crystal.row import to_atoms
from hpcxtal.generate.augment import fingerprint
from hpcxtal.generate.sample import Generator, sample_pool
from hpcxtal.store.hdf5 import file_summary


def post_process(pool) -> dict[str, int]:
    """Validity counts of a sampled pool (see the module docstring)."""
    from ase.geometry import get_distances

    stated = no_overlap = 0
    keys = set()
    for row in pool.rows():
        try:
            fp = fingerprint(row)
        except Exception:  # spglib failure: not valid
            continue
        if fp.spg != row.spg:
            continue
        stated += 1
        atoms = to_atoms(row)
        if len(atoms) > 1:
            _, d = get_distances(atoms.positions, cell=atoms.cell, pbc=True)
            d[np.diag_indices_from(d)] = np.inf
            if d.min() < 0.9:
                continue
        no_overlap += 1
        keys.add((fp.spg, fp.n_primitive, round(fp.volume_per_atom, 2),
                  tuple(round(x, 2) for x in fp.lengths)))
    return {"stated": stated, "valid": no_overlap, "unique": len(keys)}


def bench_model(path: Path, n: int, repeats: int) -> dict:
    gen = Generator(path)
    times, totals = [], {"decoded": 0, "stated": 0, "valid": 0, "unique": 0, "n": 0}
    for seed in range(repeats):
        t0 = time.perf_counter()
        pool, _ = sample_pool(path, n, seed=seed)
        times.append(time.perf_counter() - t0)
        counts = post_process(pool)
        totals["n"] += n
        totals["decoded"] += len(pool)
        for k, v in counts.items():
            totals[k] += v
    return {"kind": gen.kind, "id": gen.model_id, "params": gen.info["n_parameters"],
            "file_kb": path.stat().st_size / 1024, "train_s": gen.info["train_seconds"],
            "epochs": gen.config["epochs"], "hidden": gen.config["model"]["hidden"],
            "rows": gen.info["n_training_rows"], "sample_s": statistics.median(times), **totals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--training", type=Path, required=True)
    ap.add_argument("--cvae", type=Path, required=True)
    ap.add_argument("--vae", type=Path)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    attrs = file_summary(args.training)["attrs"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(shared with other jobs: timings are noisy)\n")
    print("| augmentation | crystals | rows | (spg, Wyckoff) conditions | rejected | wall time |")
    print("|---|---|---|---|---|---|")
    print(f"| {attrs['augment_config']} | {attrs['n_sources']} | {attrs['n_rows']} | "
          f"{attrs['n_conditions']} | {attrs['n_rejected']} | {attrs['n_seconds']:.0f} s |\n")
    results = [bench_model(args.cvae, args.samples, args.repeats)]
    if args.vae:
        results.append(bench_model(args.vae, args.samples, args.repeats))
    print("| model | hidden | parameters | file | training rows | epochs | training wall time | "
          "sampled | decoded | stated symmetry | valid (no overlap) | unique valid | "
          f"sampling {args.samples} (median of {args.repeats}) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        pct = lambda k: f"{r[k]} ({100 * r[k] / r['n']:.1f} %)"  # noqa: E731
        print(f"| {r['kind']}:{r['id']} | {r['hidden']} | {r['params']:,} | {r['file_kb']:.0f} KiB | "
              f"{r['rows']} | {r['epochs']} | {r['train_s']:.0f} s | {r['n']} | {pct('decoded')} | "
              f"{pct('stated')} | {pct('valid')} | {r['unique']} | {r['sample_s']:.2f} s |")


if __name__ == "__main__":
    main()
