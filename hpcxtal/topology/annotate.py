"""Topology of every row of a table and the first de-duplication.

:func:`annotate_table` adds the columns ``topology`` (signature key), ``dimension``
(periodicity of the net, -1 where the signature failed), ``n_prim`` (atoms per
primitive cell) and ``duplicate_of`` (id of the row's representative: the lowest id
with the same key, dimensionality and atoms per primitive cell; the row's own id if it
is the representative). Duplicates are recorded, never dropped. Rows are processed in
parallel over worker processes; results do not depend on the number of workers.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np

from hpcxtal.progress import progress
from hpcxtal.store.table import Table, str_array
from hpcxtal.topology.graph import GraphError
from hpcxtal.topology.signature import (
    DEFAULT_DEPTH,
    DEFAULT_MAX_RING,
    SignatureError,
    structure_signature,
)

log = logging.getLogger(__name__)
#: The columns this stage adds.
TOPOLOGY_COLUMNS = ("topology", "dimension", "n_prim", "duplicate_of")


@dataclass(frozen=True)
class SignatureParams:
    """How signatures are computed (picklable, sent to worker processes)."""

    cutoffs: Mapping[tuple[str, str], float] = field(default_factory=dict)
    depth: int = DEFAULT_DEPTH
    max_ring: int = DEFAULT_MAX_RING


def default_workers() -> int:
    """CPU cores this process may use (respects affinity masks set by schedulers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _one(args: tuple[np.ndarray, np.ndarray, np.ndarray, SignatureParams]
         ) -> tuple[str, int, int, str]:
    """(key, dimension, n_prim, error) of one structure; a failure is reported, not raised."""
    lattice, frac, numbers, params = args
    try:
        sig = structure_signature(lattice, frac, numbers, cutoffs=params.cutoffs,
                                  depth=params.depth, max_ring=params.max_ring)
    except (GraphError, SignatureError, ValueError, np.linalg.LinAlgError) as err:
        return "", -1, 0, str(err)
    return sig.key, sig.dimension, sig.n_prim, ""


def _jobs(table: Table, params: SignatureParams) -> Iterator[tuple]:
    """(lattice, frac, numbers, params) of every row: its stored structure where it has a
    non-empty one, else the row expanded to its conventional cell (:meth:`Table.atoms`)."""
    for i in range(len(table)):
        atoms = table.atoms(i)
        yield np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=False), atoms.numbers, params


def signatures(table: Table, params: SignatureParams, workers: int | None = None
               ) -> list[tuple[str, int, int, str]]:
    """(key, dimension, n_prim, error) of every row, in row order."""
    n = len(table)
    workers = min(workers or default_workers(), max(n, 1))
    jobs = _jobs(table, params)
    if workers <= 1:
        return list(progress(map(_one, jobs), total=n, desc="topology"))
    chunk = max(1, min(64, n // (8 * workers)))
    with ProcessPoolExecutor(workers) as pool:
        return list(progress(pool.map(_one, jobs, chunksize=chunk), total=n, desc="topology"))


def first_duplicates(ids: np.ndarray, keys: np.ndarray, dimension: np.ndarray,
                     n_prim: np.ndarray) -> np.ndarray:
    """``duplicate_of`` for each row: the lowest id sharing (key, dimension, n_prim);
    rows whose signature failed (dimension < 0) represent only themselves."""
    groups = list(zip(map(str, keys), np.asarray(dimension).tolist(), np.asarray(n_prim).tolist()))
    ids_list = np.asarray(ids, dtype=np.uint64).tolist()
    best: dict[tuple[str, int, int], int] = {}
    for group, rid in zip(groups, ids_list):
        if group[1] >= 0:
            best[group] = min(best.get(group, rid), rid)
    return np.array([best[g] if g[1] >= 0 else rid for g, rid in zip(groups, ids_list)],
                    dtype=np.uint64)


def annotate_table(table: Table, params: SignatureParams | None = None,
                   workers: int | None = None) -> Table:
    """``table`` with the topology columns added (replacing any earlier ones)."""
    params = params or SignatureParams()
    results = signatures(table, params, workers)
    keys = str_array(r[0] for r in results)
    dimension = np.array([r[1] for r in results], dtype=np.int8)
    n_prim = np.array([r[2] for r in results], dtype=np.int32)
    for i, r in enumerate(results):
        if r[3]:
            log.warning("row id %d: no topology (%s)", int(table["id"][i]), r[3])
    columns = {k: v for k, v in table.columns.items() if k not in TOPOLOGY_COLUMNS}
    columns.update(topology=keys, dimension=dimension, n_prim=n_prim,
                   duplicate_of=first_duplicates(table["id"], keys, dimension, n_prim))
    return Table(columns, table.structures, dict(table.attrs))
