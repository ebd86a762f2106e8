"""Relax the rows of a table and add the energy stage's columns.

Input structures are the table's stored structures where it has them, else its rows
expanded to atoms. The output keeps every row and adds ``energy`` (eV/atom), ``e_rel``
(eV/atom above graphite), ``status`` (converged / not_converged / failed: reason) and
``steps`` (FIRE steps); the relaxed structures (the input structure for failed rows)
become the table's structures.
"""
from __future__ import annotations

import logging

import numpy as np

from hpcxtal.progress import progress
from hpcxtal.relax.fire import CONVERGED, FAILED, NOT_CONVERGED, FireParams, RelaxResult, iter_relax
from hpcxtal.relax.models import EnergyModel
from hpcxtal.store.formats import table_images
from hpcxtal.store.table import Structures, Table, str_array

log = logging.getLogger(__name__)


def relax_table(table: Table, model: EnergyModel, params: FireParams,
                e_graphite: float) -> Table:
    """``table`` with its structures relaxed and the energy columns added."""
    images = table_images(table)
    results: list[RelaxResult | None] = [None] * len(images)
    for i, result in progress(iter_relax(images, model, params), total=len(images), desc="relax"):
        results[i] = result
    energy = np.array([r.energy / len(r.atoms) for r in results])  # type: ignore[union-attr]
    columns = dict(table.columns)
    if "steps" in columns:
        log.info("replacing the input's 'steps' column with relaxation steps")
    columns.update(
        energy=energy,
        e_rel=energy - e_graphite,
        status=str_array(r.status for r in results),  # type: ignore[union-attr]
        steps=np.array([r.steps for r in results], dtype=np.int32),  # type: ignore[union-attr]
    )
    return Table(columns, Structures.from_atoms([r.atoms for r in results]),  # type: ignore
                 dict(table.attrs))


def status_counts(table: Table, window_eV: float) -> dict[str, int]:
    """Rows converged / not converged / failed, and low-energy converged rows."""
    status = table["status"]
    converged = status == CONVERGED
    return {
        "rows": len(table),
        "converged": int(converged.sum()),
        "not_converged": int((status == NOT_CONVERGED).sum()),
        "failed": sum(s.startswith(FAILED) for s in status),
        "low_energy": int((converged & (table["e_rel"] <= window_eV)).sum()),
    }
