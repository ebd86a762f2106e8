"""The energy reference: graphite relaxed with the same model and settings as the
candidates, so ``e_rel = E/atom - E_graphite/atom`` compares like with like; for rows
of other elements, each element's standard state relaxed the same way, so ``e_rel`` is
the formation energy per atom (:func:`reference_energy`)."""
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


#: Standard states ASE's reference data give as a bulk crystal ``ase.build.bulk`` builds.
BULK_STATES = ("fcc", "bcc", "hcp", "diamond", "sc")
#: Elements taken as a diatomic molecule (the gases; bromine and iodine, molecular
#: liquid and solid, as their isolated molecule: off by their cohesive energy).
DIATOMIC = ("H", "N", "O", "F", "Cl", "Br", "I")
#: Vacuum box (Å) around a molecule.
MOLECULE_BOX_A = 12.0


def elemental_energy(z: int, model: EnergyModel, params: RelaxParams) -> float:
    """Energy per atom (eV) of element ``z``'s standard state relaxed with ``model``:
    graphite for carbon, a diatomic molecule (:data:`DIATOMIC`, started at twice the
    covalent radius) in a fixed ``MOLECULE_BOX_A`` box relaxed by ASE's BFGS, or ASE's
    reference crystal (fcc, bcc, hcp, diamond, sc) relaxed with ``params``; ValueError
    for other elements."""
    from ase import Atoms
    from ase.build import bulk
    from ase.data import chemical_symbols, covalent_radii, reference_states

    if z == 6:
        return graphite_energy(model, params)
    symbol = chemical_symbols[z]
    if symbol in DIATOMIC:
        from ase.optimize import BFGS

        from hpcxtal.relax.models import ModelCalculator

        half, d = MOLECULE_BOX_A / 2, 2 * covalent_radii[z]
        atoms = Atoms(symbol * 2, cell=[MOLECULE_BOX_A] * 3, pbc=True,
                      positions=[[half, half, half - d / 2], [half, half, half + d / 2]])
        atoms.calc = ModelCalculator(model)
        BFGS(atoms, logfile=None).run(fmax=params.fmax_eV_per_A, steps=params.max_steps)
        return float(atoms.get_potential_energy()) / len(atoms)
    kind = (reference_states[z] or {}).get("symmetry")
    if kind in BULK_STATES:
        (result,) = relax([bulk(symbol)], model, params)
        if not np.isfinite(result.energy):
            raise RuntimeError(f"{symbol} reference could not be relaxed: {result.status}")
        return result.energy / len(result.atoms)
    raise ValueError(f"no standard-state reference for {symbol} (ASE gives {kind!r}); "
                     f"its rows' e_rel cannot be a formation energy")


def reference_energy(numbers: np.ndarray, references: dict[int, float]) -> float:
    """The composition-weighted elemental reference (eV/atom) of a structure with atomic
    numbers ``numbers``; for a one-element structure exactly that element's energy."""
    z, counts = np.unique(np.asarray(numbers, dtype=int), return_counts=True)
    return float(sum(c / len(numbers) * references[int(k)] for k, c in zip(z, counts)))
