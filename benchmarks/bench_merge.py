#!/usr/bin/env python
"""Merge throughput: K synthetic relax outputs into one ranked database.

    python benchmarks/bench_merge.py [--copies 10] [--max-atoms 24] [--files 4] [--repeats 3]

Rows: every bundled SACADA structure with at most ``--max-atoms`` atoms, ``--copies``
times each (origin shift + 0.005 Å rattle, so copies are structure duplicates inside
their topology bucket), converged with random energies, plus one skipped row per
structure; keys from the topology code. Timed: ``merge_files`` end to end (read and
verify the files, spglib, StructureMatcher within buckets, training overlap with the
cached SACADA keys, write). Baseline in the same run: pymatgen's
``StructureMatcher.group_structures`` over all converged structures at once (no
topology buckets), the de-duplication step alone. Prints a Markdown table row.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcxtal.topology.stage import TopologyConfig
from hpcxtal.data import SACADA_PATH
from hpcxtal.merge.stage import merge_files
from hpcxtal.merge.database import MergeConfig, to_pymatgen
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Structures, Table, str_array
from hpcxtal.topology.annotate import SignatureParams
from hpcxtal.topology.training import training_keys


def synthetic_relax(copies: int, max_atoms: int, seed: int = 0) -> Table:
    cfg = TopologyConfig()
    params = SignatureParams(cutoffs=cfg.cutoffs(), depth=cfg.depth, max_ring=cfg.max_ring)
    keys = dict(training_keys(SACADA_PATH, params))
    table, _ = read_table(SACADA_PATH)
    rng = np.random.default_rng(seed)
    images, topo, status, reason = [], [], [], []
    for i in np.flatnonzero(table.structures.natoms <= max_atoms):
        base = table.structures.atoms(int(i))
        key = keys[str(table["origin"][i])]
        for _ in range(copies):
            atoms = base.copy()
            atoms.translate(atoms.cell.cartesian_positions(rng.random(3)))
            atoms.rattle(0.005, seed=int(rng.integers(1 << 30)))
            atoms.wrap()
            images.append(atoms), topo.append(key), status.append("converged"), reason.append("")
        images.append(base[:0]), topo.append(key), status.append("skipped")
        reason.append("not CN-valid after refinement")
    n = len(images)
    energy = rng.normal(-9.0, 0.2, n)
    energy[np.array(status) != "converged"] = np.nan
    return Table({
        "id": rng.permutation(n).astype(np.uint64), "spg": np.ones(n, np.int16),
        "wps": -np.ones((n, 8), np.int8), "cell": np.tile([5.0, 5, 5, 90, 90, 90], (n, 1)),
        "xyz": np.zeros((n, 8, 3)), "origin": str_array(["bench"] * n),
        "valid": np.array([s == "converged" for s in status]),
        "topology": str_array(topo), "dimension": np.full(n, 3, np.int8),
        "n_prim": np.zeros(n, np.int32), "duplicate_of": np.zeros(n, np.uint64),
        "energy": energy, "e_rel": energy + 9.2, "status": str_array(status),
        "status_reason": str_array(reason),
    }, Structures.from_atoms(images), {"e_graphite_eV_per_atom": -9.2,
                                       "low_energy_window_eV": 0.55})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--max-atoms", type=int, default=24)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    table = synthetic_relax(args.copies, args.max_atoms)
    table.columns["duplicate_of"] = table["id"].copy()
    n = len(table)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, part in enumerate(np.array_split(np.arange(n), args.files)):
            paths.append(Path(tmp) / f"relax-{k:04d}.h5")
            write_table(paths[-1], table.take(part), kind="relax")
        merge_files(paths, Path(tmp) / "warm.h5", MergeConfig())  # training keys cached
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            counts = merge_files(paths, Path(tmp) / f"db{r}.h5", MergeConfig())
            times.append(time.perf_counter() - t0)
    conv = np.flatnonzero(table["status"] == "converged")
    structures = [to_pymatgen(table.structures, int(i)) for i in conv]
    t0 = time.perf_counter()
    groups = MergeConfig().matcher().group_structures(structures)
    baseline = time.perf_counter() - t0
    med = statistics.median(times)
    print(f"rows {n}, converged {len(conv)}, unique {counts['unique']} (all-pairs groups "
          f"{len(groups)}), in training {counts['in_training']}")
    print(f"| {n} rows ({len(conv)} converged, <= {args.max_atoms} atoms, {args.copies} copies) "
          f"in {args.files} files | {med:.2f} s ({n / med:.0f} rows/s, median of {args.repeats}) "
          f"| {baseline:.2f} s | {baseline / med:.1f}x | {platform.processor() or platform.machine()} |")


if __name__ == "__main__":
    main()
