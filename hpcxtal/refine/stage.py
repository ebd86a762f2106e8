"""The refine stage: a pool or shard file in, refined rows out (one file per shard).

Structure rows (:func:`~hpcxtal.store.table.structure_rows`: structures no row can
hold) are not refined: they keep their structure and get ``valid`` from the target's
coordination rule checked on all their atoms (``refine_status`` "structure"). The
rows are cut into chunks of near-equal estimated cost (:mod:`hpcxtal.parallel`)
refined by ``cfg.workers`` processes (default: one per usable core, one on a GPU); the
output does not depend on the number of workers.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from hpcxtal.parallel import ChunkKernel, KeptChunks, Workers, default_workers, n_chunks, plan_chunks
from hpcxtal.refine.config import RefineConfig
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.shard import table_cost
from hpcxtal.refine.status import RefineStatus
from hpcxtal.store.table import Table, str_array, structure_rows

log = logging.getLogger(__name__)


def refine_rows(table: Table, cfg: RefineConfig) -> Table:
    """``table`` refined, with the columns loss, valid, steps, round (1), refine_status
    and refine_reason: one chunk's work, in whichever process it runs. Structure rows
    are checked, not refined; the output keeps their structures (others: empty)."""
    as_structure = structure_rows(table)
    rows = np.flatnonzero(~as_structure)
    n = len(table)
    cell, xyz = np.array(table["cell"], dtype=float), np.array(table["xyz"], dtype=float)
    loss, valid, steps = np.full(n, np.nan), np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int32)
    status, reason = [RefineStatus.STRUCTURE.value] * n, [""] * n
    if len(rows):
        # imported here: a file-mode main process plans and writes without torch
        from hpcxtal.refine.represent import refine_table

        result = refine_table(table.take(rows), cfg)
        cell[rows], xyz[rows], loss[rows], valid[rows] = result.cell, result.xyz, result.loss, result.valid
        steps[rows] = result.steps
        for k, i in enumerate(rows):
            status[i], reason[i] = str(result.status[k]), str(result.reason[k])
    if as_structure.any():
        from hpcxtal.descriptor.target import load_targets
        from hpcxtal.screen.validate import coordination_check

        target = load_targets()[cfg.target]
        for i in np.flatnonzero(as_structure):
            reason[i] = coordination_check(table.structures.atoms(int(i)), target)
            valid[i] = not reason[i]
    # refined rows' input structures are stale: emptied
    structures = None if table.structures is None else table.structures.keep(as_structure)
    out = Table(dict(table.columns), structures, dict(table.attrs))
    out.columns.update({
        "cell": cell, "xyz": xyz, "loss": loss, "valid": valid, "steps": steps,
        "round": np.ones(n, dtype=np.int8), "refine_status": str_array(status),
        "refine_reason": str_array(reason),
    })
    return out


def refine_kernel(cfg: RefineConfig) -> ChunkKernel:
    """The chunk kernel of a refine worker (module level, so workers can import it)."""
    return lambda table: refine_rows(table, cfg)


def refine_chunks(table: Table, cfg: RefineConfig) -> list[np.ndarray]:
    """The chunks a table is refined in: layout order, ``cfg.chunk_rows`` rows each on
    average, near-equal estimated cost (atoms x free variables)."""
    order = table.layout_order()
    cost = table_cost(table)[order]
    return plan_chunks(order, cost, n_chunks(len(table), cfg.chunk_rows))


def refine_file(src: Path, dest: Path, cfg: RefineConfig, **attrs: object) -> dict[str, int]:
    """Refine every row of ``src`` and write them all, valid or not, to ``dest`` with
    columns loss, valid, steps, round (1: representation space) and refine_status;
    ``attrs`` (e.g. the provenance stamp) are recorded on the file."""
    table, _ = read_table(src)
    if len(table) == 0:
        raise ValueError(f"{src}: no rows to refine")
    workers = cfg.workers or default_workers(cfg.device)
    chunks = refine_chunks(table, cfg)
    log.info("refine %s: %d rows in %d chunks over %d worker process(es)", Path(src).name,
             len(table), len(chunks), min(workers, len(chunks)))
    t0 = time.monotonic()
    kept = KeptChunks(dest, attrs)
    out = Workers(refine_kernel, cfg, workers, f"refine {Path(src).name}").map(table, chunks, kept)
    if not structure_rows(table).any():
        out.structures = None  # rows only: every geometry is the row's again
    seconds = time.monotonic() - t0
    write_table(dest, out, kind="refine", source=str(src), refine_seconds=seconds, **attrs)
    kept.clear()
    counts = {"rows": len(table), "valid": int(out["valid"].sum())}
    log.info("%s: %d rows refined in %.1f s (%.1f ms/row), %d CN-valid", dest, len(table), seconds,
             1000 * seconds / len(table), counts["valid"])
    return counts
