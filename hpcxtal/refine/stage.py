"""The refine stage: a pool or shard file in, refined rows out (one file per shard)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from hpcxtal.progress import note
from hpcxtal.refine.config import RefineConfig
from hpcxtal.refine.represent import refine_table
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table, str_array

log = logging.getLogger(__name__)



def _reporter(total: int, label: str):
    start = time.monotonic()

    def report(done: int, valid: int) -> None:
        rate = done / max(time.monotonic() - start, 1e-9)
        note(done, total)
        log.info("%s: %d/%d rows, %d CN-valid (%.1f%%), %.1f rows/s", label, done, total, valid,
                 100.0 * valid / max(done, 1), rate)
    return report


def refine_file(src: Path, dest: Path, cfg: RefineConfig, **attrs: object) -> dict[str, int]:
    """Refine every row of ``src`` and write them all, valid or not, to ``dest`` with
    columns loss, valid, steps, round (1: representation space) and refine_status;
    ``attrs`` (e.g. the provenance stamp) are recorded on the file."""
    table, _ = read_table(src)
    if len(table) == 0:
        raise ValueError(f"{src}: no rows to refine")
    t0 = time.monotonic()
    result = refine_table(table, cfg, _reporter(len(table), f"refine {Path(src).name}"))
    seconds = time.monotonic() - t0
    out = Table(dict(table.columns), None, dict(table.attrs))
    out.columns.update({
        "cell": result.cell, "xyz": result.xyz, "loss": result.loss, "valid": result.valid,
        "steps": result.steps.astype(np.int32), "round": np.ones(len(table), dtype=np.int8),
        "refine_status": str_array(result.status),
    })
    write_table(dest, out, kind="refine", source=str(src), refine_seconds=seconds, **attrs)
    counts = {"rows": len(table), "valid": int(result.valid.sum())}
    log.info("%s: %d rows refined in %.1f s (%.1f ms/row), %d CN-valid", dest, len(table), seconds,
             1000 * seconds / len(table), counts["valid"])
    return counts
