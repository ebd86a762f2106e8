"""Binary and ternary prototype crystals built offline with ASE (no downloads): rock
salt, CsCl, fluorite, rutile, cubic perovskite, spinel, wurtzite and zinc blende, as
hpcxtal rows with an element per Wyckoff site; ``source: prototypes`` of the
distance-matrix reconstruction benchmark (reference task (a)).

Lattice constants and free coordinates are textbook room-temperature values (Wyckoff,
*Crystal Structures*; rounded), good enough for a reconstruction target: the task is to
recover *these* structures, not to predict them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The name the benchmark's ``source`` uses for this set.
SOURCE = "prototypes"


@dataclass(frozen=True)
class Prototype:
    """One prototype: ASE ``crystal`` arguments (asymmetric-unit sites, one per element
    entry, in the space group's standard setting)."""

    name: str
    formula: str
    spg: int
    symbols: tuple[str, ...]
    basis: tuple[tuple[float, float, float], ...]
    cellpar: tuple[float, float, float, float, float, float]
    setting: int = 1

    def atoms(self):
        """The conventional cell as ASE Atoms."""
        from ase.spacegroup import crystal

        return crystal(list(self.symbols), list(self.basis), spacegroup=self.spg,
                       setting=self.setting, cellpar=list(self.cellpar), primitive_cell=False)


def _cubic(a: float) -> tuple[float, float, float, float, float, float]:
    return (a, a, a, 90.0, 90.0, 90.0)


#: The set, in a fixed order (the benchmark's ids are 1, 2, ... in this order).
PROTOTYPES: tuple[Prototype, ...] = (
    Prototype("rock salt", "NaCl", 225, ("Na", "Cl"), ((0, 0, 0), (0.5, 0.5, 0.5)), _cubic(5.640)),
    Prototype("caesium chloride", "CsCl", 221, ("Cs", "Cl"), ((0, 0, 0), (0.5, 0.5, 0.5)),
              _cubic(4.123)),
    Prototype("fluorite", "CaF2", 225, ("Ca", "F"), ((0, 0, 0), (0.25, 0.25, 0.25)), _cubic(5.463)),
    Prototype("rutile", "TiO2", 136, ("Ti", "O"), ((0, 0, 0), (0.3049, 0.3049, 0)),
              (4.594, 4.594, 2.959, 90.0, 90.0, 90.0)),
    Prototype("cubic perovskite", "SrTiO3", 221, ("Sr", "Ti", "O"),
              ((0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)), _cubic(3.905)),
    Prototype("spinel", "MgAl2O4", 227, ("Mg", "Al", "O"),
              ((0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2624, 0.2624, 0.2624)), _cubic(8.083),
              setting=2),
    Prototype("wurtzite", "ZnO", 186, ("Zn", "O"), ((1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.3819)),
              (3.250, 3.250, 5.207, 90.0, 90.0, 120.0)),
    Prototype("zinc blende", "ZnS", 216, ("Zn", "S"), ((0, 0, 0), (0.25, 0.25, 0.25)),
              _cubic(5.410)),
)


def prototype_table():
    """The prototypes as a :class:`~hpcxtal.store.table.Table` of decoded rows (ids 1..8,
    ``origin`` the prototype's formula), each site keeping its element."""
    from hpcxtal.crystal.row import from_structure
    from hpcxtal.store.table import Table

    rows = [from_structure(p.atoms(), elements=None) for p in PROTOTYPES]
    return Table.from_rows(rows, np.arange(1, len(rows) + 1), [p.formula for p in PROTOTYPES])
