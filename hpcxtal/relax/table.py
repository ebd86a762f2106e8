"""Relax the rows of a table and add the energy stage's columns.

Input structures are the table's stored structures where it has them, else its rows
expanded to atoms. The output keeps every row and adds ``energy`` (eV/atom), ``e_rel``
(eV/atom above graphite), ``status`` (converged / not_converged / failed: reason /
skipped: reason) and ``relax_steps`` (optimiser steps); the relaxed structures (the input
structure for failed rows, none for skipped ones) become the table's structures.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from ase import Atoms

from hpcxtal.progress import progress
from hpcxtal.relax.engine import CONVERGED, FAILED, NOT_CONVERGED, RelaxParams, RelaxResult, iter_relax
from hpcxtal.relax.models import EnergyModel
from hpcxtal.store.formats import table_images
from hpcxtal.store.table import Structures, Table, str_array

log = logging.getLogger(__name__)
#: Status prefix of rows the stage did not relax.
SKIPPED = "skipped: "


def relax_output(campaign_root: Path, shard: int) -> Path:
    """Where the campaign's relaxed shard ``shard`` lives."""
    return Path(campaign_root) / "relax" / f"relax-{shard:04d}.h5"


def relax_selection(table: Table) -> tuple[np.ndarray, dict[int, str]]:
    """Rows worth relaxing and why the others are not: a topology file's CN-valid
    representatives (``valid``, a topology key, ``duplicate_of`` its own id); every
    row of a table without those columns."""
    n = len(table)
    skipped: dict[int, str] = {}
    if "valid" in table:
        for i in np.flatnonzero(~np.asarray(table["valid"], dtype=bool)):
            skipped[int(i)] = SKIPPED + "not CN-valid after refinement"
    if "duplicate_of" in table:
        for i in range(n):
            if i in skipped:
                continue
            if table["dimension"][i] < 0:
                skipped[i] = SKIPPED + "no topology signature"
            elif table["duplicate_of"][i] != table["id"][i]:
                skipped[i] = SKIPPED + f"topology duplicate of id {int(table['duplicate_of'][i])}"
    chosen = np.array([i for i in range(n) if i not in skipped], dtype=np.int64)
    return chosen, skipped


def relax_table(table: Table, model: EnergyModel, params: RelaxParams, e_graphite: float,
                chosen: np.ndarray | None = None, skipped: dict[int, str] | None = None) -> Table:
    """``table`` with rows ``chosen`` (default all) relaxed and the energy columns added:
    ``energy``, ``e_rel`` (NaN where not relaxed), ``status`` (the reason where not
    relaxed), ``relax_steps``; relaxed structures become the table's structures (empty
    for rows not relaxed, the input structure for failed ones)."""
    n = len(table)
    chosen = np.arange(n) if chosen is None else np.asarray(chosen, dtype=np.int64)
    skipped = skipped or {}
    images = table_images(table.take(chosen))
    results: list[RelaxResult | None] = [None] * len(images)
    for i, result in progress(iter_relax(images, model, params), total=len(images), desc="relax"):
        results[i] = result
    energy = np.full(n, np.nan)
    status = [skipped.get(i, SKIPPED + "not selected") for i in range(n)]
    steps = np.zeros(n, dtype=np.int32)
    structures = [Atoms(pbc=True) for _ in range(n)]
    for k, r in zip(chosen, results):
        energy[k] = r.energy / len(r.atoms)  # type: ignore[union-attr]
        status[k] = r.status  # type: ignore[union-attr]
        steps[k] = r.steps  # type: ignore[union-attr]
        structures[k] = r.atoms  # type: ignore[union-attr]
    columns = dict(table.columns)
    columns.update(energy=energy, e_rel=energy - e_graphite, status=str_array(status),
                   relax_steps=steps)
    return Table(columns, Structures.from_atoms(structures), dict(table.attrs))


def status_counts(table: Table, window_eV: float) -> dict[str, int]:
    """Rows relaxed, converged / not converged / failed, and low-energy converged rows."""
    status = table["status"]
    converged = status == CONVERGED
    return {
        "rows": len(table),
        "relaxed": sum(not s.startswith(SKIPPED) for s in status),
        "converged": int(converged.sum()),
        "not_converged": int((status == NOT_CONVERGED).sum()),
        "failed": sum(s.startswith(FAILED) for s in status),
        "low_energy": int((converged & (table["e_rel"] <= window_eV)).sum()),
    }
