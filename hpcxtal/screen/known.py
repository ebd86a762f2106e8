"""Known carbon phases a relaxed candidate is compared with, by name.

Graphite (AB and AA stacking), cubic diamond and lonsdaleite are built here; every
structure of the bundled SACADA set (``hpcxtal/data/sacada_sp2.h5``) is named by its
SACADA id and, where SACADA gives one, its RCSR topology name ("sacada:12 (pcu-h)").
Phases are grouped by topology key (computed with the campaign's signature settings;
SACADA's keys come from the cached training keys) so a candidate is compared first with
phases of its own net; a 3-D candidate that keeps its motif and matches none of those is
also compared with every phase of the same primitive atom count (spglib), so a bond that
crosses the cutoff on relaxation cannot hide a known phase.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from ase import Atoms
from ase.geometry import cellpar_to_cell

from hpcxtal.data import SACADA_PATH
from hpcxtal.topology.annotate import SignatureParams
from hpcxtal.topology.signature import atoms_signature

if TYPE_CHECKING:
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

#: SACADA's name for a net without an RCSR name.
UNNAMED = "aaa"


def _hexagonal(a: float, c: float, frac: list[list[float]]) -> Atoms:
    return Atoms(f"C{len(frac)}", scaled_positions=frac, pbc=True,
                 cell=cellpar_to_cell([a, a, c, 90, 90, 120]))


def builtin_phases() -> dict[str, Atoms]:
    """Graphite (AB, AA), diamond and lonsdaleite at their experimental geometry."""
    from ase.build import bulk

    z = 1 / 16  # lonsdaleite 4f, c = 4.12 Å: bonds of 1.54-1.55 Å
    return {
        "graphite (AB)": _hexagonal(2.46, 6.70, [[0, 0, 0.25], [0, 0, 0.75],
                                                 [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
        "graphite (AA)": _hexagonal(2.46, 3.35, [[0, 0, 0], [1 / 3, 2 / 3, 0]]),
        "diamond": bulk("C", "diamond", a=3.567),
        "lonsdaleite": _hexagonal(2.52, 4.12, [[1 / 3, 2 / 3, z], [2 / 3, 1 / 3, 0.5 + z],
                                               [1 / 3, 2 / 3, 0.5 - z], [2 / 3, 1 / 3, 1 - z]]),
    }


def sacada_names() -> dict[str, str]:
    """SACADA origin ("sacada:12") -> display name ("sacada:12 (pcu-h)")."""
    from hpcxtal.store.hdf5 import read_table

    names = {}
    for part in read_table(SACADA_PATH):
        if part is None:
            continue
        for origin, topo in zip(part["origin"], part["topology"]):
            names[str(origin)] = str(origin) if topo in ("", UNNAMED) else f"{origin} ({topo})"
    return names


def _params_key(params: SignatureParams) -> tuple:
    return (tuple(sorted(params.cutoffs.items())), params.depth, params.max_ring)


@lru_cache(maxsize=4)
def _known(params_key: tuple, workers: int | None) -> dict[str, list]:
    from pymatgen.io.ase import AseAtomsAdaptor

    from hpcxtal.topology.training import training_set

    cutoffs, depth, max_ring = params_key
    params = SignatureParams(cutoffs=dict(cutoffs), depth=depth, max_ring=max_ring)
    out: dict[str, list] = {}
    for name, atoms in builtin_phases().items():
        sig = atoms_signature(atoms, cutoffs=params.cutoffs, depth=depth, max_ring=max_ring)
        out.setdefault(sig.key, []).append((name, AseAtomsAdaptor.get_structure(atoms)))
    names = sacada_names()
    for key, pairs in training_set(SACADA_PATH, params, workers).items():
        out.setdefault(key, []).extend((names.get(origin, origin), s) for origin, s in pairs)
    return out


def known_phases(params: SignatureParams, workers: int | None = None) -> dict[str, list]:
    """Topology key -> [(name, pymatgen Structure)] of every known phase, built-in
    phases first (computed once per process and signature settings)."""
    return _known(_params_key(params), workers)


def primitive_count(structure: Structure, symprec: float) -> int:
    """Atoms in the primitive cell spglib finds at ``symprec`` Å (the cell's atoms if none)."""
    import spglib

    cell = (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
    try:
        found = spglib.standardize_cell(cell, to_primitive=True, no_idealize=True, symprec=symprec)
    except (spglib.SpglibError, ValueError):
        found = None
    return len(structure) if found is None else len(found[2])


def by_primitive_count(known: dict[str, list], symprec: float) -> dict[int, list]:
    """Primitive atom count -> [(name, pymatgen Structure, topology key)] of every phase."""
    out: dict[int, list] = {}
    for key, pairs in known.items():
        for name, ref in pairs:
            out.setdefault(primitive_count(ref, symprec), []).append((name, ref, key))
    return out


def match_known(key: str, structure: Structure, known: dict[str, list],
                matcher: StructureMatcher) -> str:
    """Name of the first known phase of topology ``key`` that ``matcher`` fits to the
    pymatgen ``structure``, else ""."""
    for name, ref in known.get(key, []):
        if matcher.fit(ref, structure):
            return name
    return ""


def match_any_key(key: str, structure: Structure, by_count: dict[int, list],
                  matcher: StructureMatcher, symprec: float) -> str:
    """Name of the first known phase of another topology key than ``key``, with the same
    primitive atom count, that ``matcher`` fits to ``structure``, else ""."""
    for name, ref, ref_key in by_count.get(primitive_count(structure, symprec), []):
        if ref_key != key and matcher.fit(ref, structure):
            return name
    return ""
