"""The energy reference: graphite relaxed with the same model and settings as the
candidates, so ``e_rel = E/atom - E_graphite/atom`` compares like with like."""
from __future__ import annotations

import logging

import numpy as np

from hpcxtal.relax.engine import CONVERGED, RelaxParams, relax
from hpcxtal.relax.models import EnergyModel

log = logging.getLogger(__name__)

#: Starting geometry of AB-stacked graphite (space group 194, sites 2b and 2c), Å.
GRAPHITE_A_A = 2.46
GRAPHITE_C_A = 6.70


def graphite():
    """AB (Bernal) graphite, 4 atoms, a = 2.46 Å, c = 6.70 Å, as ASE Atoms."""
    from ase import Atoms
    from ase.geometry import cellpar_to_cell

    cell = cellpar_to_cell([GRAPHITE_A_A, GRAPHITE_A_A, GRAPHITE_C_A, 90, 90, 120])
    frac = np.array([[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    return Atoms("C4", scaled_positions=frac, cell=cell, pbc=True)


def graphite_energy(model: EnergyModel, params: RelaxParams) -> float:
    """Energy per atom (eV) of graphite relaxed with ``model`` and ``params``."""
    (result,) = relax([graphite()], model, params)
    if not np.isfinite(result.energy):
        raise RuntimeError(f"graphite reference could not be relaxed with {model.source}: "
                           f"{result.status}")
    if result.status != CONVERGED:
        log.warning("graphite reference %s after %d steps (fmax %.3f eV/Å); using its energy",
                    result.status, result.steps, result.fmax)
    cellpar = result.atoms.cell.cellpar()
    log.info("graphite reference: %.4f eV/atom, a = %.3f Å, c = %.3f Å (%s, %d steps)",
             result.energy / len(result.atoms), cellpar[0], cellpar[2], result.status,
             result.steps)
    return result.energy / len(result.atoms)
