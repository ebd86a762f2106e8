"""In-memory tables of crystals: one entry per row in every column.

A :class:`Table` is the unit every stage reads and writes. The row columns are fixed
(``id``, ``spg``, ``wps``, ``cell``, ``xyz``, ``species``, ``origin``; a table with
``wps`` but no ``species``, built by hand or read from an older file, gets carbon on
every occupied site); stages add their own columns
(``loss``, ``valid``, ``energy``, ``status`` ...). Explicit structures, where a row
came from one or a stage produced one, ride along as ragged :class:`Structures`.

A *structure row* stands for a structure no row can hold (more than 8 Wyckoff sites):
no Wyckoff site, its stored structure non-empty (:func:`structure_rows`). Stages do not
refine it; topology, relaxation, validation and merge use its structure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from hpcxtal.crystal.row import CARBON, N_SITES, Row

#: The fixed row columns, their dtypes and per-row shapes.
ROW_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "id": ("uint64", ()),
    "spg": ("int16", ()),
    "wps": ("int8", (N_SITES,)),
    "cell": ("float64", (6,)),
    "xyz": ("float64", (N_SITES, 3)),
    "species": ("uint8", (N_SITES,)),
    "origin": ("str", ()),
}


def carbon_species(wps: np.ndarray) -> np.ndarray:
    """(N, 8) species column of rows with Wyckoff indices ``wps``: carbon on every
    occupied site, 0 in empty slots (what a row that names no element holds)."""
    return np.where(np.asarray(wps) >= 0, CARBON, 0).astype(np.uint8)


def str_array(values: Iterable[str]) -> np.ndarray:
    """An object array of Python strings (how tables hold text columns)."""
    items = [str(v) for v in values]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@dataclass
class Structures:
    """Ragged periodic structures: atoms of structure ``i`` are
    ``frac[offsets[i]:offsets[i + 1]]``; lattice rows are the cell vectors in Å."""

    natoms: np.ndarray  # (N,) int64
    lattice: np.ndarray  # (N, 3, 3) float64
    frac: np.ndarray  # (sum natoms, 3) float64
    numbers: np.ndarray  # (sum natoms,) int16 atomic numbers

    def __post_init__(self) -> None:
        self.natoms = np.asarray(self.natoms, dtype=np.int64)
        self.lattice = np.asarray(self.lattice, dtype=np.float64).reshape(-1, 3, 3)
        self.frac = np.asarray(self.frac, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int16)
        total = int(self.natoms.sum())
        if len(self.lattice) != len(self.natoms) or len(self.frac) != total or len(self.numbers) != total:
            raise ValueError("ragged structure arrays disagree in length")

    def __len__(self) -> int:
        return len(self.natoms)

    @property
    def offsets(self) -> np.ndarray:
        """(N + 1,) start of each structure's atoms, then the total."""
        return np.concatenate([[0], np.cumsum(self.natoms)])

    @classmethod
    def from_atoms(cls, images: Sequence) -> "Structures":
        """From ASE Atoms objects."""
        if not images:
            return cls(np.zeros(0), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0))
        return cls(
            np.array([len(a) for a in images]),
            np.array([np.asarray(a.cell) for a in images]),
            np.concatenate([a.get_scaled_positions(wrap=True) for a in images]),
            np.concatenate([a.numbers for a in images]),
        )

    def atoms(self, i: int):
        """Structure ``i`` as ASE Atoms."""
        from ase import Atoms

        lo, hi = self.offsets[i], self.offsets[i + 1]
        return Atoms(numbers=self.numbers[lo:hi], scaled_positions=self.frac[lo:hi],
                     cell=self.lattice[i], pbc=True)

    def take(self, idx: np.ndarray) -> "Structures":
        idx = np.asarray(idx, dtype=np.int64)
        off = self.offsets
        atom_idx = (
            np.concatenate([np.arange(off[i], off[i + 1]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
        )
        return Structures(self.natoms[idx], self.lattice[idx], self.frac[atom_idx], self.numbers[atom_idx])

    def keep(self, mask: np.ndarray) -> "Structures":
        """The same entries, those where ``mask`` is false emptied (no atoms)."""
        mask = np.asarray(mask, dtype=bool)
        atom_mask = np.repeat(mask, self.natoms)
        return Structures(np.where(mask, self.natoms, 0), self.lattice, self.frac[atom_mask],
                          self.numbers[atom_mask])

    @staticmethod
    def concat(parts: Sequence["Structures"]) -> "Structures":
        return Structures(
            np.concatenate([p.natoms for p in parts]),
            np.concatenate([p.lattice for p in parts]),
            np.concatenate([p.frac for p in parts]),
            np.concatenate([p.numbers for p in parts]),
        )


@dataclass
class Table:
    """Columns of equal length (one entry per row) plus optional ragged structures."""

    columns: dict[str, np.ndarray]
    structures: Structures | None = None
    attrs: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {name: len(col) for name, col in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns differ in length: {lengths}")
        if "wps" in self.columns and "species" not in self.columns:
            self.columns["species"] = carbon_species(
                np.asarray(self.columns["wps"]).reshape(-1, N_SITES))
        for name, (dtype, shape) in ROW_COLUMNS.items():
            if name not in self.columns:
                continue
            col = self.columns[name]
            if dtype == "str":
                self.columns[name] = col if col.dtype == object else str_array(col)
            else:
                self.columns[name] = np.asarray(col, dtype=dtype).reshape((-1, *shape))
        if self.structures is not None and len(self.structures) != len(self):
            raise ValueError(f"{len(self.structures)} structures for {len(self)} rows")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @classmethod
    def from_rows(cls, rows: Sequence[Row], ids: Sequence[int], origins: Sequence[str],
                  **extra: np.ndarray) -> "Table":
        """A table of decoded rows with their ids and origins, plus extra columns."""
        n = len(rows)
        columns = {
            "id": np.asarray(ids, dtype=np.uint64).reshape(n),
            "spg": np.array([r.spg for r in rows], dtype=np.int16),
            "wps": np.array([r.wps for r in rows], dtype=np.int8).reshape(n, N_SITES),
            "cell": np.array([r.cell for r in rows], dtype=float).reshape(n, 6),
            "xyz": np.array([r.xyz for r in rows], dtype=float).reshape(n, N_SITES, 3),
            "species": np.array([r.species for r in rows], dtype=np.uint8).reshape(n, N_SITES),
            "origin": str_array(origins),
        }
        columns.update(extra)
        return cls(columns)

    def row(self, i: int) -> Row:
        """Row ``i`` as a :class:`Row` (as stored; no re-symmetrisation)."""
        return Row(int(self["spg"][i]), self["cell"][i].copy(),
                   self["wps"][i].astype(np.int64), self["xyz"][i].copy(),
                   species=self["species"][i].astype(np.int64))

    def atoms(self, i: int):
        """Row ``i``'s geometry as ASE Atoms: its stored structure where it has a
        non-empty one, else the row expanded to its conventional cell (a table without
        row columns, a quarantine, gives its stored structure, empty or not)."""
        if self.structures is not None and (self.structures.natoms[i] > 0 or "wps" not in self):
            return self.structures.atoms(i)
        from hpcxtal.crystal.row import to_atoms

        return to_atoms(self.row(i))

    def rows(self) -> Iterator[Row]:
        for i in range(len(self)):
            yield self.row(i)

    def take(self, idx: np.ndarray) -> "Table":
        """Rows ``idx`` (in that order) as a new table with the same attributes."""
        idx = np.asarray(idx, dtype=np.int64)
        return Table(
            {k: v[idx] for k, v in self.columns.items()},
            None if self.structures is None else self.structures.take(idx),
            dict(self.attrs),
        )

    @staticmethod
    def concat(parts: Sequence["Table"]) -> "Table":
        """Rows of all ``parts`` in order; they must have the same columns."""
        if not parts:
            raise ValueError("nothing to concatenate")
        names = list(parts[0].columns)
        for p in parts[1:]:
            if sorted(p.columns) != sorted(names):
                raise ValueError(f"tables differ in columns: {names} vs {list(p.columns)}")
        has_structures = {p.structures is not None for p in parts}
        if len(has_structures) > 1:
            raise ValueError("some tables carry structures and some do not")
        structures = Structures.concat([p.structures for p in parts]) if has_structures == {True} else None
        return Table({k: np.concatenate([p[k] for p in parts]) for k in names}, structures,
                     dict(parts[0].attrs))

    def layout_order(self) -> np.ndarray:
        """Stable order by space group, then Wyckoff layout, then elements, then id:
        rows of one group and layout become neighbours, so a batch shares its index maps."""
        keys = [self["id"]] + [self["species"][:, k] for k in reversed(range(N_SITES))] \
            + [self["wps"][:, k] for k in reversed(range(N_SITES))] + [self["spg"]]
        return np.lexsort(keys)


def structure_rows(table: Table) -> np.ndarray:
    """(N,) bool: the structure rows of ``table`` (no Wyckoff site, a non-empty stored
    structure), which stages pass on as structures instead of refining them."""
    if "wps" not in table or table.structures is None:
        return np.zeros(len(table), dtype=bool)
    return (np.asarray(table["wps"])[:, 0] < 0) & (table.structures.natoms > 0)
