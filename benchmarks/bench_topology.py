"""Topology benchmark: signature invariance over all 150 SACADA structures and
signature throughput (structures/s on one core).

Invariance: each structure's key must survive a 2x2x1 supercell, a random origin shift,
a random atom permutation, a translationengleiche subgroup setting from pyxtal
(``subgroup_once(eps=0)``, a klassengleiche one where no t-subgroup is available) and
a 0.01 Å random distortion; the 25 named nets must get 25 distinct keys.

Throughput: the signature (bond graph, verified orbits, coordination sequences to
depth 12, ring invariant, dimensionality) of every SACADA structure and of every decoded
row of generated_candidates_1k.csv (conventional cells expanded from the rows), one
process, median of ``--runs`` runs. The baseline, measured in the same run, is the same
signature with every atom as a walk start (no symmetry shortcut).

    PYTHONPATH=. python benchmarks/bench_topology.py [--runs 3] [--json out.json]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from hpcxtal.data import sacada_structures  # noqa: E402
from hpcxtal.store.formats import read_csv  # noqa: E402
from hpcxtal.topology.graph import GraphError  # noqa: E402
from hpcxtal.topology.signature import (  # noqa: E402
    SignatureError,
    atoms_signature,
    structure_signature,
)

CANDIDATES = "/work/shared/data/generated_candidates_1k.csv"


def subgroup_variant(atoms, seed: int):
    """A lower-symmetry setting of ``atoms`` from pyxtal, or None if none is found."""
    from pyxtal import pyxtal

    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xtal = pyxtal()
        xtal.from_seed(atoms, tol=0.01)
        for kind in ("t", "k"):
            try:
                return xtal.subgroup_once(eps=0, group_type=kind).to_ase(), kind
            except Exception:  # pyxtal raises bare exceptions when no subgroup fits
                continue
    return None, "none"


def invariance(structures) -> dict:
    rng = np.random.default_rng(2026)
    failures, subgroup_kinds = [], {"t": 0, "k": 0, "none": 0}
    start = time.perf_counter()
    keys = []
    for k, atoms in enumerate(structures):
        key = atoms_signature(atoms).key
        keys.append(key)
        shifted = atoms.copy()
        shifted.set_scaled_positions(atoms.get_scaled_positions() + rng.random(3))
        distorted = atoms.copy()
        distorted.positions += rng.normal(scale=0.01, size=(len(atoms), 3))
        variants = {"supercell 2x2x1": atoms.repeat((2, 2, 1)), "origin shift": shifted,
                    "permutation": atoms[rng.permutation(len(atoms))], "distortion": distorted}
        sub, kind = subgroup_variant(atoms, k)
        subgroup_kinds[kind] += 1
        if sub is not None:
            variants["subgroup"] = sub
        for name, variant in variants.items():
            if atoms_signature(variant).key != key:
                failures.append(f"{atoms.info['origin']}: {name}")
    named = {atoms_signature(a).key for a in structures if a.info["topology"] != "aaa"}
    n_named = sum(a.info["topology"] != "aaa" for a in structures)
    return {"structures": len(structures), "failures": failures,
            "distinct_keys": len(set(keys)), "named_nets": n_named,
            "named_distinct_keys": len(named), "subgroup_kinds": subgroup_kinds,
            "seconds": time.perf_counter() - start}


def cells_of_candidates() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    table, _ = read_csv(CANDIDATES)
    out = []
    for row in table.rows():
        frac = row.frac_positions()
        out.append((row.lattice(), frac, np.full(len(frac), 6)))
    return out


def throughput(cells, runs: int, **kwargs) -> tuple[float, list[float], int]:
    """(structures/s median over runs, run times, structures without a signature)."""
    times = []
    for _ in range(runs):
        failed = 0
        start = time.perf_counter()
        for lattice, frac, numbers in cells:
            try:
                structure_signature(lattice, frac, numbers, **kwargs)
            except (GraphError, SignatureError):
                failed += 1
        times.append(time.perf_counter() - start)
    return len(cells) / statistics.median(times), times, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--skip-invariance", action="store_true")
    args = parser.parse_args()
    sacada = sacada_structures()
    sacada_cells = [(np.asarray(a.cell), a.get_scaled_positions(), a.numbers) for a in sacada]
    cand_cells = cells_of_candidates()
    results: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                f"{os.cpu_count()} cores", "runs": args.runs}
    if not args.skip_invariance:
        inv = invariance(sacada)
        results["invariance"] = inv
        print(f"invariance: {inv['structures']} structures, {len(inv['failures'])} failures "
              f"{inv['failures'][:5]}, {inv['distinct_keys']} distinct keys, named nets "
              f"{inv['named_distinct_keys']}/{inv['named_nets']} distinct, subgroups "
              f"{inv['subgroup_kinds']}, {inv['seconds']:.1f} s")
    for name, cells in (("sacada", sacada_cells), ("candidates", cand_cells)):
        atoms = np.array([len(c[1]) for c in cells])
        rate, times, failed = throughput(cells, args.runs)
        base, base_times, _ = throughput(cells, args.runs, symprec=None)
        results[name] = {"structures": len(cells), "failed": failed,
                         "atoms_median": float(np.median(atoms)),
                         "atoms_max": int(atoms.max()), "per_s": rate, "times_s": times,
                         "baseline_per_s": base, "baseline_times_s": base_times,
                         "speedup": rate / base}
        print(f"{name}: {len(cells)} structures ({failed} without signature; median "
              f"{np.median(atoms):.0f} atoms, max {atoms.max()}): {rate:.1f}/s with orbits, "
              f"{base:.1f}/s all-atom baseline, x{rate / base:.2f}; runs {[round(t, 2) for t in times]} / "
              f"{[round(t, 2) for t in base_times]} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
