"""Relax the rows of a table and add the energy stage's columns.

Input structures are the table's stored structures where it has them, else its rows
expanded to atoms. The output keeps every row and adds ``energy`` (eV/atom), ``e_rel``
(eV/atom above graphite; for rows of other elements, above their elements' standard
states: the formation energy), ``status`` (a :class:`~hpcxtal.relax.status.RelaxStatus`: converged /
not_converged / failed / skipped), ``status_reason`` (why a row failed or was skipped,
"" otherwise), ``relax_steps`` (optimiser steps) and how far relaxation moved each structure
(``energy_initial``, ``rms_displacement_A``, ``volume_change``, see
:mod:`hpcxtal.screen.closeness`); the relaxed structures (the input structure for
failed rows, none for skipped ones) become the table's structures.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from hpcxtal.progress import progress
from hpcxtal.relax.engine import RelaxParams, RelaxResult, iter_relax
from hpcxtal.relax.models import EnergyModel
from hpcxtal.relax.reference import reference_energy
from hpcxtal.relax.status import RelaxStatus
from hpcxtal.screen.closeness import displacement_rms, volume_change
from hpcxtal.store.formats import table_images
from hpcxtal.store.table import Structures, Table, str_array

log = logging.getLogger(__name__)


def relax_selection(table: Table) -> tuple[np.ndarray, dict[int, str]]:
    """Rows worth relaxing and why the others are not: a topology file's CN-valid
    representatives (``valid``, a topology key, ``duplicate_of`` its own id); every
    row of a table without those columns."""
    n = len(table)
    skipped: dict[int, str] = {}
    if "valid" in table:
        for i in np.flatnonzero(~np.asarray(table["valid"], dtype=bool)):
            skipped[int(i)] = "not CN-valid after refinement"
    if "duplicate_of" in table:
        for i in range(n):
            if i in skipped:
                continue
            if table["dimension"][i] < 0:
                skipped[i] = "no topology signature"
            elif table["duplicate_of"][i] != table["id"][i]:
                skipped[i] = f"topology duplicate of id {int(table['duplicate_of'][i])}"
    chosen = np.array([i for i in range(n) if i not in skipped], dtype=np.int64)
    return chosen, skipped


def _status(result: RelaxResult) -> tuple[RelaxStatus, str]:
    """(status, reason) of an optimiser result (it reports "failed: why" as one string)."""
    head, _, reason = result.status.partition(": ")
    return RelaxStatus(head), reason


def initial_energies(images: Sequence[Atoms], model: EnergyModel, atom_budget: int) -> np.ndarray:
    """Energy per atom (eV) of every image before relaxation, in batches of at most
    ``atom_budget`` atoms; NaN where the model cannot evaluate an image."""
    out = np.full(len(images), np.nan)
    finite = [i for i, a in enumerate(images)
              if len(a) and np.isfinite(a.positions).all() and np.isfinite(np.asarray(a.cell)).all()]
    batches: list[list[int]] = []
    for i in finite:
        if batches and sum(len(images[k]) for k in batches[-1]) + len(images[i]) <= atom_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    for batch in batches:
        try:
            energy = model.evaluate([images[k] for k in batch]).energy.detach().cpu().double().numpy()
        except Exception:  # noqa: BLE001 - find the image the model rejects, one by one
            if len(batch) == 1:
                continue
            batches.extend([k] for k in batch)
            continue
        out[batch] = energy / np.array([len(images[k]) for k in batch])
    return out


def relax_table(table: Table, model: EnergyModel, params: RelaxParams,
                references: Mapping[int, float], chosen: np.ndarray | None = None,
                skipped: dict[int, str] | None = None) -> Table:
    """``table`` with rows ``chosen`` (default all) relaxed and the energy columns added:
    ``energy``, ``e_rel`` (above the composition-weighted ``references``, eV/atom of
    each element's standard state, see :func:`hpcxtal.relax.reference.reference_energy`;
    NaN where not relaxed), ``status`` and ``status_reason`` (the
    reason from ``skipped`` where not relaxed), ``relax_steps``, ``energy_initial``,
    ``rms_displacement_A``, ``volume_change``; relaxed structures become the table's
    structures (empty for rows not relaxed, the input structure for failed ones)."""
    n = len(table)
    chosen = np.arange(n) if chosen is None else np.asarray(chosen, dtype=np.int64)
    skipped = skipped or {}
    images = table_images(table.take(chosen))
    if images:
        model.check_elements(np.concatenate([a.numbers for a in images]))
    results: list[RelaxResult | None] = [None] * len(images)
    for i, result in progress(iter_relax(images, model, params), total=len(images), desc="relax"):
        results[i] = result
    energy, e_initial, rms, dvol, e_ref = (np.full(n, np.nan) for _ in range(5))
    e_initial[chosen] = initial_energies(images, model, params.batch_atom_budget)
    status = [RelaxStatus.SKIPPED.value] * n
    reason = [skipped.get(i, "not selected") for i in range(n)]
    steps = np.zeros(n, dtype=np.int32)
    structures = [Atoms(pbc=True) for _ in range(n)]
    for k, start, r in zip(chosen, images, results):
        assert r is not None
        state, why = _status(r)
        energy[k] = r.energy / len(r.atoms)
        e_ref[k] = reference_energy(start.numbers, references)
        status[k], reason[k], steps[k], structures[k] = state.value, why, r.steps, r.atoms
        if state is not RelaxStatus.FAILED:
            rms[k] = displacement_rms(start, r.atoms)
            dvol[k] = volume_change(start, r.atoms)
    columns = dict(table.columns)
    columns.update(energy=energy, e_rel=energy - e_ref, status=str_array(status),
                   status_reason=str_array(reason), relax_steps=steps, energy_initial=e_initial,
                   rms_displacement_A=rms, volume_change=dvol)
    return Table(columns, Structures.from_atoms(structures), dict(table.attrs))


def status_counts(table: Table, window_eV: float) -> dict[str, int]:
    """Rows relaxed, converged / not converged / failed, and low-energy converged rows."""
    status = table["status"]
    converged = status == RelaxStatus.CONVERGED
    return {
        "rows": len(table),
        "relaxed": int((status != RelaxStatus.SKIPPED).sum()),
        "converged": int(converged.sum()),
        "not_converged": int((status == RelaxStatus.NOT_CONVERGED).sum()),
        "failed": int((status == RelaxStatus.FAILED).sum()),
        "low_energy": int((converged & (table["e_rel"] <= window_eV)).sum()),
    }
