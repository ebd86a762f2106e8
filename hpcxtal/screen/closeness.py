"""How far relaxation moved a structure (as DP-CDVAE reports generated-to-relaxed).

Per structure: RMS displacement of the atoms (fractional displacements taken in the
relaxed cell, minimum image, rigid translation removed; Å), relative volume change,
and (in the merge stage) whether StructureMatcher still matches the two.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms


def displacement_rms(start: Atoms, end: Atoms) -> float:
    """RMS displacement (Å) of the atoms of ``end`` from ``start`` (same atoms, same
    order): fractional displacements wrapped to the nearest image, mean (rigid
    translation) removed, expressed in ``end``'s cell; NaN if the atoms differ."""
    if len(start) != len(end) or len(end) == 0:
        return float("nan")
    d = end.get_scaled_positions(wrap=False) - start.get_scaled_positions(wrap=False)
    d -= np.round(d)
    d -= d.mean(axis=0)
    cart = d @ np.asarray(end.cell)
    return float(np.sqrt((cart * cart).sum(axis=1).mean()))


def volume_change(start: Atoms, end: Atoms) -> float:
    """Relative change of the cell volume, ``V_end / V_start - 1`` (NaN if undefined)."""
    v0 = abs(start.cell.volume)
    return float(abs(end.cell.volume) / v0 - 1.0) if v0 > 0 else float("nan")
