"""Post-relax validation: re-check every relaxed structure and class every row.

On each converged relaxed structure: the coordination rule of the campaign's target
(:func:`coordination_check`, the rule refinement applies, here to every atom), the
topology key, dimensionality and atoms per primitive cell recomputed on the relaxed
structure, and a match against known phases (:mod:`hpcxtal.screen.known`). Then every
row gets one :class:`RowClass` and a human-readable reason (:func:`classify`). Reports
and accounting read the class, never the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from hpcxtal.descriptor.target import Target
from hpcxtal.relax.status import RelaxStatus
from hpcxtal.screen.known import by_primitive_count, match_any_key, match_known
from hpcxtal.store.table import Structures, Table, str_array
from hpcxtal.topology.annotate import SignatureParams, signatures

if TYPE_CHECKING:
    from pymatgen.analysis.structure_matcher import StructureMatcher


class RowClass(StrEnum):
    """What a campaign makes of a sampled row (the database's ``class`` column)."""

    NEW = "new"  # 3-D net, motif kept after relaxation, matches no known phase
    KNOWN = "known"  # matches a known phase (``known_phase`` names it)
    MOTIF_LOST = "motif_lost"  # relaxed structure breaks the target's coordination rule
    LOW_DIMENSIONAL = "low_dimensional"  # relaxed net of layers, chains or molecules
    DUPLICATE = "duplicate"  # of ``duplicate_of`` (topology before or structure after relaxation)
    INVALID = "invalid"  # not CN-valid after refinement
    FAILED = "failed"  # no signature, relaxation failed or did not converge
    QUARANTINED = "quarantined"  # never decoded (the database's /quarantine, not a row)


def coordination_check(atoms: Atoms, target: Target) -> str:
    """"" if every atom of ``atoms`` has an allowed coordination number within the
    target's ``cn_cutoff_A`` (strictly below, all images) and no atom is closer than
    ``min_distance_A`` to another, else why not (refinement's rule, applied to every atom
    because a relaxed structure need not keep its Wyckoff sites)."""
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return "no atoms"
    i, d = neighbor_list("id", atoms, target.cn_cutoff_A)
    cn = np.bincount(i[d < target.cn_cutoff_A], minlength=len(atoms))
    bad = ~np.isin(cn, target.cn)
    if bad.any():
        found = sorted(set(cn[bad].tolist()))
        return (f"{int(bad.sum())} of {len(atoms)} atoms have CN {found} "
                f"(allowed {list(target.cn)} within {target.cn_cutoff_A} Å)")
    if len(d) and d.min() < target.min_distance_A:
        return f"atoms {d.min():.2f} Å apart (minimum {target.min_distance_A} Å)"
    return ""


@dataclass
class RelaxedChecks:
    """Per row of a table (entries of rows not checked: "", -1, 0, False, "")."""

    topology: np.ndarray  # str: key of the relaxed net
    dimension: np.ndarray  # int8: its periodicity, -1 where none
    n_prim: np.ndarray  # int32: its atoms per primitive cell
    signature_error: list[str]  # why a relaxed structure has no key
    motif_reason: list[str]  # "" where the target's coordination rule holds
    known_phase: np.ndarray  # str: name of the matching known phase
    known_net: list[str]  # name of the first known phase with the same relaxed key


def check_relaxed(structures: Structures, rows: np.ndarray, target: Target,
                  params: SignatureParams, known: dict[str, list], matcher: StructureMatcher,
                  workers: int | None = None, symprec: float = 0.1) -> RelaxedChecks:
    """Coordination, relaxed topology and known-phase match of ``structures`` at row
    indices ``rows`` (the converged relaxed structures): phases of the same relaxed key
    first; a 3-D structure that keeps the motif and matches none of them is compared with
    every phase of its primitive atom count (spglib at ``symprec`` Å)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    by_count = by_primitive_count(known, symprec)
    n = len(structures)
    out = RelaxedChecks(str_array([""] * n), np.full(n, -1, np.int8), np.zeros(n, np.int32),
                        [""] * n, [""] * n, str_array([""] * n), [""] * n)
    rows = np.asarray(rows, dtype=np.int64)
    sub = Table({"id": rows.astype(np.uint64)}, structures.take(rows))
    keys, names = list(out.topology), list(out.known_phase)
    for i, (key, dim, n_prim, error) in zip(rows, signatures(sub, params, workers)):
        atoms = structures.atoms(int(i))
        keys[i], out.dimension[i], out.n_prim[i], out.signature_error[i] = key, dim, n_prim, error
        out.motif_reason[i] = coordination_check(atoms, target)
        if key:
            out.known_net[i] = known[key][0][0] if known.get(key) else ""
            structure = AseAtomsAdaptor.get_structure(atoms)
            names[i] = match_known(key, structure, known, matcher)
            if not names[i] and dim == 3 and not out.motif_reason[i]:
                names[i] = match_any_key(key, structure, by_count, matcher, symprec)
    out.topology, out.known_phase = str_array(keys), str_array(names)
    return out


def classify(*, ids: np.ndarray, valid: np.ndarray, dimension_refined: np.ndarray,
             first_duplicate_of: np.ndarray, status: np.ndarray, status_reason: np.ndarray,
             duplicate_of: np.ndarray, checks: RelaxedChecks) -> tuple[np.ndarray, np.ndarray]:
    """(class, reason) of every row. Rows never relaxed: invalid, duplicate (topology
    duplicate before relaxation) or failed (no signature); relaxed rows: failed (relaxation
    failed, not converged, or no signature after it), duplicate (``duplicate_of`` names
    another row), else known > motif_lost > low_dimensional > new, in that order."""
    n = len(ids)
    cls, why = [RowClass.FAILED.value] * n, [""] * n
    for i in range(n):
        rid, dup = int(ids[i]), int(duplicate_of[i])
        if status[i] == RelaxStatus.SKIPPED:
            if not valid[i]:
                cls[i], why[i] = RowClass.INVALID, "not CN-valid after refinement"
            elif dimension_refined[i] < 0:
                cls[i], why[i] = RowClass.FAILED, "no topology signature before relaxation"
            elif int(first_duplicate_of[i]) != rid:
                cls[i], why[i] = (RowClass.DUPLICATE,
                                  f"same net as id {int(first_duplicate_of[i])} before relaxation")
            else:
                cls[i], why[i] = RowClass.FAILED, f"not relaxed: {status_reason[i]}"
        elif status[i] != RelaxStatus.CONVERGED:
            cls[i], why[i] = RowClass.FAILED, f"relaxation {status[i]}" + (
                f": {status_reason[i]}" if status_reason[i] else "")
        elif not checks.topology[i]:
            cls[i], why[i] = RowClass.FAILED, ("no topology signature after relaxation: "
                                               f"{checks.signature_error[i] or 'no structure'}")
        elif dup != rid:
            cls[i], why[i] = RowClass.DUPLICATE, f"same structure as id {dup} after relaxation"
        elif checks.known_phase[i]:
            cls[i], why[i] = RowClass.KNOWN, f"matches {checks.known_phase[i]}" + (
                f"; motif lost: {checks.motif_reason[i]}" if checks.motif_reason[i] else "")
        elif checks.motif_reason[i]:
            cls[i], why[i] = RowClass.MOTIF_LOST, checks.motif_reason[i]
        elif checks.dimension[i] < 3:
            cls[i], why[i] = RowClass.LOW_DIMENSIONAL, f"{checks.dimension[i]}-periodic net" + (
                f", the net of {checks.known_net[i]} in another stacking or geometry"
                if checks.known_net[i] else "")
        else:
            cls[i], why[i] = RowClass.NEW, ""
    return str_array(str(c) for c in cls), str_array(why)
