"""One crystal as a tabular row: space group, 6 lattice parameters, 8 Wyckoff sites.

In memory a row is ``spg`` (int), ``cell`` (6,) in Å and degrees, ``wps`` (8,) Wyckoff
indices in pyxtal's numbering (0 = general position, -1 = empty slot) and ``xyz`` (8, 3)
fractional generator coordinates (-1 in empty slots) and ``species`` (8,) the atomic
number of each site's element (0 in empty slots; carbon unless given, so single-element
rows need not say it). :func:`decode` turns raw, possibly unsymmetrised numbers (a
generative model's output) into a clean row or says why not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hpcxtal.crystal.symmetry import (
    cell_matrix,
    expand_site,
    snap_to_wyckoff,
    space_group,
    symmetrize_cell,
)

N_SITES = 8
#: The element of a site when a row does not say (the campaigns' original element).
CARBON = 6
#: The heaviest element a row may hold (the elements ASE and pymatgen name).
MAX_ATOMIC_NUMBER = 118
#: Lengths and angles a decoded cell must respect (Å, degrees).
LENGTH_RANGE_A = (0.5, 100.0)
ANGLE_RANGE_DEG = (10.0, 170.0)
#: Atoms of a structure file closer than this (Å) overlap: the file is not a crystal.
MIN_SEPARATION_A = 0.5
#: Symmetry-finding tolerances (Å) that spglib and pyxtal handle sanely.
SYMMETRY_TOLERANCE_RANGE_A = (1e-5, 1.0)


class DecodeError(ValueError):
    """A row that cannot be turned into a crystal; the message says why."""


class TooManySites(DecodeError):
    """A sound crystal whose symmetry needs more Wyckoff sites than a row holds: it can
    still go through a campaign as a structure (see :func:`structure_row`)."""

    def __init__(self, n_sites: int, spg: int):
        super().__init__(f"{n_sites} Wyckoff sites; at most {N_SITES} fit a row")
        self.n_sites, self.spg = n_sites, spg


@dataclass(frozen=True)
class Row:
    """A decoded, symmetry-consistent crystal row."""

    spg: int
    cell: np.ndarray  # (6,) Å, degrees
    wps: np.ndarray  # (8,) int, -1 = empty
    xyz: np.ndarray  # (8, 3) fractional, -1 in empty slots
    snap_distance: float = 0.0  # largest distance (Å) a site moved when decoded
    species: np.ndarray | None = None  # (8,) atomic numbers, 0 = empty; None: carbon

    def __post_init__(self) -> None:
        occupied = np.asarray(self.wps) >= 0
        given = self.species
        species = np.where(occupied, CARBON if given is None else np.asarray(given), 0)
        object.__setattr__(self, "species", species.astype(np.int64).reshape(len(occupied)))

    @property
    def n_sites(self) -> int:
        return int((self.wps >= 0).sum())

    def lattice(self) -> np.ndarray:
        """(3, 3) row-vector lattice matrix in Å."""
        return cell_matrix(self.cell)

    def frac_positions(self) -> np.ndarray:
        """Fractional positions of all atoms of the conventional cell, site by site."""
        group = space_group(self.spg)
        return np.concatenate(
            [expand_site(group.wyckoff[w], x) for w, x in zip(self.wps, self.xyz) if w >= 0]
        )

    def numbers(self) -> np.ndarray:
        """Atomic number of every atom of the conventional cell, in the order of
        :meth:`frac_positions`."""
        group = space_group(self.spg)
        return np.concatenate([np.full(group.wyckoff[w].multiplicity, z, dtype=np.int64)
                               for w, z in zip(self.wps, self.species) if w >= 0])

    def elements(self) -> list[str]:
        """Element symbol of each occupied site, e.g. ``['Na', 'Cl']``."""
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for w, z in zip(self.wps, self.species) if w >= 0]

    def labels(self) -> list[str]:
        """Wyckoff labels of the occupied sites, e.g. ``['2b', '2c']``."""
        group = space_group(self.spg)
        return [group.wyckoff[w].label for w in self.wps if w >= 0]

    def n_atoms(self) -> int:
        group = space_group(self.spg)
        return int(sum(group.wyckoff[w].multiplicity for w in self.wps if w >= 0))


def is_empty_slot(wp: float, xyz: np.ndarray) -> bool:
    """An empty slot has a negative Wyckoff index or a coordinate near the -1 padding.

    Raw model output pads with values only approximately -1; a coordinate below -0.5
    cannot be a wrapped fractional coordinate of a real site, so the slot is empty.
    """
    return round(float(wp)) < 0 or bool(np.any(np.asarray(xyz) < -0.5))


def _check_cell_ranges(cell: np.ndarray, which: str) -> None:
    """Raise DecodeError unless lengths and angles of ``cell`` lie in their ranges."""
    lo, hi = LENGTH_RANGE_A
    if not np.all((cell[:3] >= lo) & (cell[:3] <= hi)):
        raise DecodeError(f"{which}cell lengths {np.round(cell[:3], 4).tolist()} outside {lo}-{hi} Å")
    lo, hi = ANGLE_RANGE_DEG
    if not np.all((cell[3:] >= lo) & (cell[3:] <= hi)):
        raise DecodeError(f"{which}cell angles {np.round(cell[3:], 3).tolist()} outside "
                          f"{lo}-{hi} degrees")


def decode(
    spg: float,
    cell: np.ndarray,
    wps: np.ndarray,
    xyz: np.ndarray,
    snap_tolerance: float | None = None,
    check_raw: bool = True,
    species: np.ndarray | None = None,
) -> Row:
    """Validate and symmetrise a raw row; raise :class:`DecodeError` with the reason.

    The lattice gets the constraints of its space group, every occupied site is
    snapped onto the nearest generator of its Wyckoff position (raw model output can
    sit Å away from a special position; ``snap_tolerance`` in Å, if given, rejects
    such rows) and occupied sites are packed to the front. Raw lengths and angles are
    range-checked before the symmetry mean unless ``check_raw`` is False (a generator's
    columns tied by symmetry carry no information; the symmetrised cell is checked).
    ``species`` gives each slot's atomic number (None: carbon everywhere); it moves
    with its site when sites are packed.
    """
    spg_f = float(spg)
    if not np.isfinite(spg_f) or spg_f != round(spg_f) or not 1 <= spg_f <= 230:
        raise DecodeError(f"space group {spg!r} is not an integer in 1-230")
    n = int(spg_f)
    group = space_group(n)
    cell = np.asarray(cell, dtype=float)
    if cell.shape != (6,) or not np.all(np.isfinite(cell)):
        raise DecodeError(f"cell {cell.tolist()} is not 6 finite numbers")
    # Raw values first: a length of 0 or -1 must not be averaged into a plausible one.
    if check_raw:
        _check_cell_ranges(cell, "raw ")
    cell = symmetrize_cell(n, cell)
    _check_cell_ranges(cell, "")
    try:
        matrix = cell_matrix(cell)
    except ValueError as err:
        raise DecodeError(str(err)) from None
    wps = np.asarray(wps, dtype=float)
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    if len(wps) != len(xyz) or len(wps) > N_SITES:
        raise DecodeError(f"{len(wps)} Wyckoff sites; at most {N_SITES} fit a row")
    numbers = np.full(len(wps), CARBON, dtype=np.int64) if species is None else \
        np.asarray(species, dtype=np.int64).reshape(-1)
    if len(numbers) != len(wps):
        raise DecodeError(f"{len(numbers)} elements for {len(wps)} Wyckoff sites")
    out_wps = -np.ones(N_SITES, dtype=np.int64)
    out_xyz = -np.ones((N_SITES, 3))
    out_species = np.zeros(N_SITES, dtype=np.int64)
    k = 0
    largest_move = 0.0
    for slot, (w, p) in enumerate(zip(wps, xyz)):
        if not np.isfinite(w) or not np.all(np.isfinite(p)):
            raise DecodeError(f"site {slot} has non-finite values")
        if is_empty_slot(w, p):
            continue
        wi = int(round(w))
        if wi >= len(group.wyckoff):
            raise DecodeError(
                f"site {slot}: Wyckoff index {wi} not in space group {n} "
                f"(it has {len(group.wyckoff)} positions, 0-{len(group.wyckoff) - 1})"
            )
        if not 1 <= numbers[slot] <= MAX_ATOMIC_NUMBER:
            raise DecodeError(f"site {slot}: atomic number {int(numbers[slot])} is no element "
                              f"(1-{MAX_ATOMIC_NUMBER})")
        wp = group.wyckoff[wi]
        snapped, moved = snap_to_wyckoff(group, wp, p - np.floor(p), matrix)
        if snap_tolerance is not None and moved > snap_tolerance:
            raise DecodeError(
                f"site {slot}: ({p[0]:.4f}, {p[1]:.4f}, {p[2]:.4f}) is {moved:.3f} Å from "
                f"Wyckoff position {wp.label} (tolerance {snap_tolerance} Å)"
            )
        out_wps[k] = wi
        out_xyz[k] = snapped
        out_species[k] = numbers[slot]
        largest_move = max(largest_move, moved)
        k += 1
    if k == 0:
        raise DecodeError("no occupied Wyckoff site")
    return Row(n, cell, out_wps, out_xyz, largest_move, out_species)


def stored_row_problems(spg: np.ndarray, cell: np.ndarray, wps: np.ndarray,
                        xyz: np.ndarray, species: np.ndarray | None = None) -> list[str]:
    """Per row of a stored table, why it is no decoded row ("" if it is one): a cheap,
    vectorised check (space group, finite cell in range, Wyckoff indices of the group,
    finite coordinates, an element on every occupied site, an occupied site) for files
    that bypassed :func:`decode`."""
    from hpcxtal.crystal.symmetry import wyckoff_cost_tables

    _, _, known = wyckoff_cost_tables()
    spg = np.asarray(spg, dtype=np.int64)
    cell = np.asarray(cell, dtype=float).reshape(len(spg), 6)
    wps = np.asarray(wps, dtype=np.int64).reshape(len(spg), N_SITES)
    xyz = np.asarray(xyz, dtype=float).reshape(len(spg), N_SITES, 3)
    group = np.clip(spg, 0, 230)
    occupied = wps >= 0
    lengths, angles = cell[:, :3], cell[:, 3:]
    checks = [
        ((spg < 1) | (spg > 230), "space group {spg} is not in 1-230"),
        (~np.all(np.isfinite(cell), axis=1)
         | ~np.all((lengths >= LENGTH_RANGE_A[0]) & (lengths <= LENGTH_RANGE_A[1]), axis=1)
         | ~np.all((angles >= ANGLE_RANGE_DEG[0]) & (angles <= ANGLE_RANGE_DEG[1]), axis=1),
         "cell {cell} is not finite or outside the ranges of a decoded row"),
        (np.any(occupied & ~known[group[:, None], np.clip(wps, 0, known.shape[1] - 1)]
                | (wps >= known.shape[1]), axis=1),
         "Wyckoff indices {wps} are not all positions of space group {spg}"),
        (np.any(occupied[:, :, None] & ~np.isfinite(xyz), axis=(1, 2)), "non-finite coordinates"),
        (np.zeros(len(spg), dtype=bool) if species is None else
         np.any(occupied & ((np.asarray(species).reshape(len(spg), N_SITES) < 1)
                            | (np.asarray(species).reshape(len(spg), N_SITES) > MAX_ATOMIC_NUMBER)),
                axis=1), "an occupied site without an element (atomic number 1-118)"),
        (~occupied.any(axis=1), "no occupied Wyckoff site"),
    ]
    problems = [""] * len(spg)
    for bad, text in checks:
        for i in np.flatnonzero(bad):
            if not problems[i]:
                problems[i] = text.format(spg=int(spg[i]), cell=np.round(cell[i], 4).tolist(),
                                          wps=wps[i][occupied[i]].tolist())
    return problems


def from_pyxtal(xtal) -> Row:
    """Row of a pyxtal crystal, generator and element of each site taken as is."""
    from ase.data import atomic_numbers

    if len(xtal.atom_sites) > N_SITES:
        raise TooManySites(len(xtal.atom_sites), int(xtal.group.number))
    wps = -np.ones(N_SITES, dtype=np.int64)
    xyz = -np.ones((N_SITES, 3))
    species = np.zeros(N_SITES, dtype=np.int64)
    for k, site in enumerate(xtal.atom_sites):
        wps[k] = site.wp.index
        xyz[k] = site.position - np.floor(site.position)
        species[k] = atomic_numbers[str(site.specie)]
    cell = np.array(xtal.lattice.get_para(degree=True), dtype=float)
    return decode(xtal.group.number, cell, wps, xyz, species=species)


def to_pyxtal(row: Row):
    """A pyxtal crystal built from ``row`` (pyxtal's own construction), one species
    entry per element of the row."""
    from pyxtal import pyxtal
    from pyxtal.lattice import Lattice

    group = space_group(row.spg)
    a, b, c, al, be, ga = row.cell
    lattice = Lattice.from_para(a, b, c, al, be, ga, ltype=group.system)
    elements = list(dict.fromkeys(row.elements()))
    sites: dict[str, list] = {el: [] for el in elements}
    counts = dict.fromkeys(elements, 0)
    for w, x, el in zip([w for w in row.wps if w >= 0], row.xyz[row.wps >= 0], row.elements()):
        sites[el].append((group.wyckoff[w].label, *x))
        counts[el] += group.wyckoff[w].multiplicity
    xtal = pyxtal()
    xtal.build(row.spg, elements, [counts[el] for el in elements], lattice,
               [sites[el] for el in elements])
    return xtal


def to_atoms(row: Row):
    """ASE Atoms of the conventional cell of ``row``, each atom its site's element."""
    from ase import Atoms

    return Atoms(numbers=row.numbers(), scaled_positions=row.frac_positions(),
                 cell=row.lattice(), pbc=True)


def to_structure(row: Row):
    """pymatgen Structure of the conventional cell of ``row``."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(row.lattice()), row.numbers().tolist(), row.frac_positions())


def check_symmetry_tolerance(tol: float) -> float:
    """``tol`` (Å) if spglib and pyxtal can use it, else ValueError (a negative one
    crashes spglib)."""
    lo, hi = SYMMETRY_TOLERANCE_RANGE_A
    if not lo <= float(tol) <= hi:
        raise ValueError(f"symmetry tolerance {tol} Å is outside {lo}-{hi} Å")
    return float(tol)


def structure_row(atoms, spg: int = 1) -> Row:
    """The row that stands for a structure a row cannot hold: space group ``spg`` (what
    symmetry analysis found; information only), the structure's cell parameters and no
    Wyckoff site. The geometry is the stored structure
    (:attr:`hpcxtal.store.table.Table.structures`); stages refine no such row."""
    cell = np.asarray(atoms.cell.cellpar(), dtype=float)
    return Row(int(spg), cell, -np.ones(N_SITES, dtype=np.int64), -np.ones((N_SITES, 3)))


def check_structure(atoms, elements: Sequence[str] | None = ("C",)) -> None:
    """Raise DecodeError unless ASE ``atoms`` is an ordered periodic crystal of
    ``elements`` (None: any) with no overlapping atoms: what a row of this campaign can
    hold."""
    if len(atoms) == 0:
        raise DecodeError("no atoms")
    cell = np.asarray(atoms.cell, dtype=float)
    if not np.all(atoms.pbc) or not np.all(np.isfinite(cell)) or abs(np.linalg.det(cell)) < 1e-6:
        raise DecodeError("no periodic 3D cell (a molecule or slab, not a crystal)")
    occupancy = atoms.info.get("occupancy") or {}
    for tag, occ in sorted(occupancy.items()):
        if len(occ) > 1 or any(abs(float(v) - 1.0) > 1e-3 for v in occ.values()):
            shares = ", ".join(f"{el} {float(v):g}" for el, v in occ.items())
            raise DecodeError(f"partial or mixed occupancy on site {tag} ({shares}); a row "
                              f"holds fully occupied sites only")
    found = sorted(set(atoms.get_chemical_symbols()))
    if elements is not None and not set(found) <= set(elements):
        raise DecodeError(f"elements {', '.join(found)}: the campaign's elements are "
                          f"{', '.join(elements)}")
    if not np.all(np.isfinite(atoms.positions)):
        raise DecodeError("non-finite atom positions")
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, MIN_SEPARATION_A)
    if len(d):
        k = int(np.argmin(d))
        raise DecodeError(f"atoms {int(i[k])} and {int(j[k])} overlap ({float(d[k]):.3f} Å "
                          f"apart, below {MIN_SEPARATION_A} Å)")


def from_structure(structure, tol: float = 0.01,
                   elements: Sequence[str] | None = ("C",)) -> Row:
    """Row of a periodic structure (ASE Atoms or pymatgen Structure) found by symmetry
    analysis at ``tol`` Å, each site keeping its element; raises DecodeError if it is no
    crystal of ``elements`` (None: any; see :func:`check_structure`), or
    :class:`TooManySites` if it needs more than 8 Wyckoff sites."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pyxtal import pyxtal

    check_symmetry_tolerance(tol)
    if not hasattr(structure, "get_scaled_positions"):
        if not structure.is_ordered:
            raise DecodeError(f"partial or mixed occupancy ({structure.composition.formula})")
        structure = AseAtomsAdaptor.get_atoms(structure)
    check_structure(structure, elements)
    structure = AseAtomsAdaptor.get_structure(structure)
    xtal = pyxtal()
    try:
        xtal.from_seed(structure, tol=tol)
    except Exception as err:  # pyxtal raises bare exceptions on failed analysis
        raise DecodeError(f"symmetry analysis failed: {err}") from None
    if not xtal.valid:
        raise DecodeError("symmetry analysis failed")
    return from_pyxtal(xtal)
