"""Split a pool into K shard files of near-equal estimated cost.

Rows are put in layout order (space group, then Wyckoff layout) and cut into K
contiguous runs of equal cumulative cost, so each shard keeps its rows grouped for
batching and every worker gets about the same amount of work.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcxtal.crystal.symmetry import FREE_LATTICE_PARAMETERS, lattice_system, wyckoff_cost_tables
from hpcxtal.layout import shard_path
from hpcxtal.store.hdf5 import write_table
from hpcxtal.store.table import Table, structure_rows


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """How the pool is cut for parallel stages."""

    n_shards: int = 2

    def __post_init__(self) -> None:
        if self.n_shards < 1:
            raise ValueError(f"n_shards must be at least 1, got {self.n_shards}")

_FREE_LATTICE = np.array([0] + [FREE_LATTICE_PARAMETERS[lattice_system(s)] for s in range(1, 231)])


def row_cost(spg: np.ndarray, wps: np.ndarray) -> np.ndarray:
    """Estimated refinement cost of each row: atoms in the cell x free variables."""
    mult, dof, _ = wyckoff_cost_tables()
    spg = np.asarray(spg, dtype=np.int64)
    wps = np.asarray(wps, dtype=np.int64)
    occupied = wps >= 0
    idx = np.where(occupied, wps, 0)
    atoms = (mult[spg[:, None], idx] * occupied).sum(axis=1)
    free = _FREE_LATTICE[spg] + (dof[spg[:, None], idx] * occupied).sum(axis=1)
    return (atoms * free).astype(np.float64)


def table_cost(table: Table) -> np.ndarray:
    """:func:`row_cost` of every row; a structure row (never refined) costs its atom
    count, so that structures spread over shards for the stages that do use them."""
    cost = row_cost(table["spg"], table["wps"])
    as_structure = structure_rows(table)
    if as_structure.any():
        cost[as_structure] = table.structures.natoms[as_structure]
    return cost


def plan_shards(table: Table, k: int) -> list[np.ndarray]:
    """Row indices of each of ``k`` shards: layout-sorted, contiguous, cost-balanced."""
    if k < 1:
        raise ValueError(f"number of shards must be at least 1, got {k}")
    if k > len(table):
        raise ValueError(f"cannot cut {len(table)} rows into {k} non-empty shards; use at most "
                         f"{max(len(table), 1)} shards (-k, or shard.n_shards of a campaign)")
    order = table.layout_order()
    cost = np.cumsum(table_cost(table)[order])
    cuts = np.searchsorted(cost, cost[-1] * np.arange(1, k) / k, side="left") + 1
    cuts = np.clip(cuts, np.arange(1, k), len(table) - np.arange(k - 1, 0, -1))
    cuts = np.maximum.accumulate(np.maximum(cuts, np.arange(1, k)))
    return np.split(order, cuts)



def _write_one(directory: Path, i: int, k: int, idx: np.ndarray, attrs: dict) -> Path:
    assert _SOURCE is not None
    shard = _SOURCE.take(idx)
    cost = float(table_cost(shard).sum())
    return write_table(shard_path(directory, i), shard, kind="shard", shard=i,
                       n_shards=k, estimated_cost=cost, **attrs)


def write_shards(table: Table, k: int, directory: str | os.PathLike, workers: int | None = None,
                 **attrs: object) -> list[Path]:
    """Write ``k`` shard files of ``table`` into ``directory``, one writer process per
    file at a time (``workers`` processes, default: the available cores)."""
    global _SOURCE
    parts = plan_shards(table, k)
    workers = min(k, workers or len(os.sched_getaffinity(0)))
    _SOURCE = table
    try:
        if workers == 1:
            return [_write_one(Path(directory), i, k, idx, attrs) for i, idx in enumerate(parts)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_write_one, Path(directory), i, k, idx, attrs)
                       for i, idx in enumerate(parts)]
            return [f.result() for f in futures]
    finally:
        _SOURCE = None
