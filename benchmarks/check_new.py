"""Check a campaign database's 'new' class independently, and record its headline counts.

For every row of class new: the relaxed net is 3-D, the motif is kept, and StructureMatcher
(the merge tolerances) matches it with NO known phase: graphite (AB, AA), diamond,
lonsdaleite and every SACADA structure, all of them regardless of topology key (each
structure reduced once; pairs with different primitive atom counts cannot match and are
skipped). Prints and writes (``--json``) the before/after headline counts, the classes,
the known phases re-found, closeness quantiles and the check's verdict.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchlib import finish
from hpcxtal.topology.stage import TopologyConfig
from hpcxtal.report import accounting, metrics
from hpcxtal.screen.known import known_phases
from hpcxtal.merge.database import MergeConfig, read_database, to_pymatgen
from hpcxtal.store.hdf5 import file_summary
from hpcxtal.topology.annotate import SignatureParams


def _reduced(structure):
    return structure.get_primitive_structure().get_reduced_structure()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("database", type=Path)
    ap.add_argument("--n-sampled", type=int, help="rows sampled (default: the database's record)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    db, quarantine = read_database(args.database)
    attrs = file_summary(args.database)["attrs"]
    n_sampled = args.n_sampled or int(attrs["n_sampled"])
    science = json.loads(attrs["stage_config"])  # what the merge stage was run with
    cfg = MergeConfig(**science["merge"])
    topo = TopologyConfig(**science["topology"])
    params = SignatureParams(cutoffs=topo.cutoffs(), depth=topo.depth, max_ring=topo.max_ring)
    t0 = time.perf_counter()
    phases = [(name, _reduced(s)) for pairs in known_phases(params).values() for name, s in pairs]
    matcher = cfg.matcher()
    new = np.flatnonzero(db["class"] == "new")
    problems = []
    for i in new:
        rid = int(db["id"][i])
        if db["dimension_relaxed"][i] != 3 or not db["motif_kept"][i]:
            problems.append(f"id {rid}: dimension {db['dimension_relaxed'][i]}, "
                            f"motif kept {bool(db['motif_kept'][i])}")
        s = _reduced(to_pymatgen(db.structures, int(i)))
        for name, ref in phases:
            if len(ref) == len(s) and matcher.fit(ref, s, skip_structure_reduction=True):
                problems.append(f"id {rid} matches {name}")
    books = accounting(db, quarantine, n_sampled)
    window = float(attrs.get("low_energy_window_eV", 0.55))
    m = metrics(db, n_sampled, window)
    report = {"database": str(args.database), "n_sampled": n_sampled, "rows": len(db),
              "before": m["before"], "after": m["after"], "classes": m["classes"],
              "accounting": books.counts, "accounting_closes": books.closes,
              "known_phases": m["known_phases"], "closeness": m["closeness"],
              "n_new_checked": int(len(new)), "phases_compared": len(phases),
              "new_check_problems": problems, "check_s": round(time.perf_counter() - t0, 1)}
    finish(report, args.json)


if __name__ == "__main__":
    main()
