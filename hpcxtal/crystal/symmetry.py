"""Space-group and Wyckoff tables from pyxtal (shipped), as cached numpy arrays.

pyxtal numbers the Wyckoff positions of a group from the general position (index 0)
to the most special one; hpcxtal uses the same numbering everywhere. Every generator
operation ``G = (A, t)`` in pyxtal's tables is idempotent modulo lattice translations
and its free coordinates are the non-zero columns of ``A``, which is what the snapping
and free-variable code below relies on (checked in the tests for all 230 groups).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Lattice system of each space group, as pyxtal names it (rhombohedral groups use the
#: hexagonal setting, so trigonal groups share the hexagonal constraints).
LATTICE_SYSTEMS = (
    (2, "triclinic"),
    (15, "monoclinic"),
    (74, "orthorhombic"),
    (142, "tetragonal"),
    (167, "trigonal"),
    (194, "hexagonal"),
    (230, "cubic"),
)

#: Number of free lattice parameters per lattice system.
FREE_LATTICE_PARAMETERS = {
    "triclinic": 6,
    "monoclinic": 4,
    "orthorhombic": 3,
    "tetragonal": 2,
    "trigonal": 2,
    "hexagonal": 2,
    "cubic": 1,
}


def lattice_system(spg: int) -> str:
    """Lattice system of space group ``spg`` (1-230)."""
    if not 1 <= spg <= 230:
        raise ValueError(f"space group {spg} is not in 1-230")
    for last, name in LATTICE_SYSTEMS:
        if spg <= last:
            return name
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class WyckoffPosition:
    """One Wyckoff position: its label, its orbit operations and its generator."""

    index: int
    label: str
    multiplicity: int
    ops: np.ndarray  # (multiplicity, 3, 4) affine operations generating the orbit
    free: np.ndarray  # (3,) bool, which of x, y, z are free in the generator

    @property
    def dof(self) -> int:
        """Number of free coordinates of this position."""
        return int(self.free.sum())

    @property
    def generator(self) -> np.ndarray:
        """(3, 4) affine operation mapping any point onto the generator subspace."""
        return self.ops[0]


@dataclass(frozen=True)
class SpaceGroup:
    """A space group with its Wyckoff positions (pyxtal order, general first)."""

    number: int
    symbol: str
    system: str
    wyckoff: tuple[WyckoffPosition, ...]

    @property
    def general_ops(self) -> np.ndarray:
        """(n, 3, 4) operations of the general position."""
        return self.wyckoff[0].ops


#: Every group's Wyckoff positions (operations, labels, multiplicities) and symbol as
#: pyxtal defines them, shipped so that no process imports pyxtal or builds its groups
#: to decode, cost or check rows (seconds of every command's and worker's start-up).
SPACE_GROUP_TABLES = Path(__file__).resolve().parents[1] / "data" / "space_groups.npz"


def build_space_group_tables() -> dict[str, np.ndarray]:
    """The arrays of :data:`SPACE_GROUP_TABLES` built from pyxtal's groups (slow: every
    group). Regenerate the shipped file with ``np.savez_compressed(SPACE_GROUP_TABLES,
    **build_space_group_tables())`` after a pyxtal upgrade that changes them (a test
    compares): positions in group order, each position's operations consecutive."""
    from pyxtal.symmetry import Group

    symbol, group_of, index, label, mult, ops = [""], [], [], [], [], []
    for spg in range(1, 231):
        group = Group(spg)
        symbol.append(group.symbol)
        for wp in group:
            group_of.append(spg)
            index.append(wp.index)
            label.append(wp.get_label())
            mult.append(wp.multiplicity)
            ops.extend(op.affine_matrix[:3, :] for op in wp.ops)
    return {"symbol": np.array(symbol), "group": np.array(group_of, dtype=np.int16),
            "index": np.array(index, dtype=np.int16), "label": np.array(label),
            "multiplicity": np.array(mult, dtype=np.int16),
            "ops": np.array(ops, dtype=float)}


@lru_cache(maxsize=1)
def _space_group_tables() -> dict[str, np.ndarray]:
    """The shipped tables, read once per process, with ``first_op``: where each
    position's operations start in ``ops``."""
    with np.load(SPACE_GROUP_TABLES) as f:
        tables = {name: f[name] for name in f.files}
    mult = tables["multiplicity"]
    tables["first_op"] = np.cumsum(mult, dtype=np.int64) - mult
    return tables


@lru_cache(maxsize=None)
def space_group(spg: int) -> SpaceGroup:
    """The tables of space group ``spg`` (pyxtal's, from :data:`SPACE_GROUP_TABLES`), cached."""
    system = lattice_system(spg)
    t = _space_group_tables()
    positions = []
    for k in np.flatnonzero(t["group"] == spg):
        ops = t["ops"][t["first_op"][k]:t["first_op"][k] + t["multiplicity"][k]].copy()
        ops.setflags(write=False)
        free = np.any(ops[0][:, :3] != 0, axis=0)
        free.setflags(write=False)
        positions.append(WyckoffPosition(int(t["index"][k]), str(t["label"][k]),
                                         int(t["multiplicity"][k]), ops, free))
    return SpaceGroup(spg, str(t["symbol"][spg]), system, tuple(positions))


@lru_cache(maxsize=1)
def wyckoff_cost_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables over all groups, indexed ``[spg, wp]``: multiplicity, free
    coordinates, and a valid-entry mask. Shape (231, 27); row 0 unused."""
    t = _space_group_tables()
    group, index = t["group"].astype(np.int64), t["index"].astype(np.int64)
    mult = np.zeros((231, 27), dtype=np.int64)
    dof = np.zeros((231, 27), dtype=np.int64)
    ok = np.zeros((231, 27), dtype=bool)
    mult[group, index] = t["multiplicity"]
    dof[group, index] = np.any(t["ops"][t["first_op"]][:, :, :3] != 0, axis=1).sum(1)
    ok[group, index] = True
    for table in (mult, dof, ok):
        table.setflags(write=False)
    return mult, dof, ok


def symmetrize_cell(spg: int, cell: np.ndarray) -> np.ndarray:
    """Impose the lattice constraints of ``spg`` on (a, b, c, alpha, beta, gamma).

    Lengths in Å, angles in degrees. Constrained equal lengths take their mean;
    constrained angles take their fixed value (monoclinic: unique axis b).
    """
    a, b, c, alpha, beta, gamma = (float(v) for v in cell)
    system = lattice_system(spg)
    if system == "monoclinic":
        alpha = gamma = 90.0
    elif system == "orthorhombic":
        alpha = beta = gamma = 90.0
    elif system == "tetragonal":
        a = b = (a + b) / 2
        alpha = beta = gamma = 90.0
    elif system in ("trigonal", "hexagonal"):
        a = b = (a + b) / 2
        alpha = beta = 90.0
        gamma = 120.0
    elif system == "cubic":
        a = b = c = (a + b + c) / 3
        alpha = beta = gamma = 90.0
    return np.array([a, b, c, alpha, beta, gamma])


def cell_matrix(cell: np.ndarray) -> np.ndarray:
    """Row-vector lattice matrix from (a, b, c, alpha, beta, gamma) in Å and degrees.

    ``a`` along x, ``b`` in the xy plane (ASE's convention). Raises ValueError for
    parameters that do not describe a cell of positive volume.
    """
    a, b, c = (float(v) for v in cell[:3])
    al, be, ga = np.radians(np.asarray(cell[3:6], dtype=float))
    if min(a, b, c) <= 0:
        raise ValueError(f"non-positive cell length in {list(np.round(cell[:3], 6))}")
    cos_al, cos_be, cos_ga = np.cos(al), np.cos(be), np.cos(ga)
    sin_ga = np.sin(ga)
    cx = cos_be
    cy = (cos_al - cos_be * cos_ga) / sin_ga
    cz2 = 1.0 - cx * cx - cy * cy
    if not np.isfinite(cz2) or cz2 <= 1e-8 or abs(sin_ga) < 1e-8:
        raise ValueError(
            "cell angles (%.3f, %.3f, %.3f) degrees give no cell of positive volume"
            % tuple(np.degrees([al, be, ga]))
        )
    return np.array(
        [[a, 0.0, 0.0], [b * cos_ga, b * sin_ga, 0.0], [c * cx, c * cy, c * np.sqrt(cz2)]]
    )


def snap_to_wyckoff(
    group: SpaceGroup, wp: WyckoffPosition, xyz: np.ndarray, matrix: np.ndarray
) -> tuple[np.ndarray, float]:
    """Nearest generator of ``wp`` to the point ``xyz`` (fractional).

    Every image of ``xyz`` under the general-position operations is mapped onto the
    generator subspace; the image moved least (Cartesian distance, minimum image) wins,
    the point itself on ties.
    Returns the snapped generator, wrapped into [0, 1), and the distance moved in Å.
    """
    ops = group.general_ops
    images = ops[:, :, :3] @ xyz + ops[:, :, 3]  # (n, 3)
    gen = wp.generator
    snapped = images @ gen[:, :3].T + gen[:, 3]
    delta = snapped - images
    delta -= np.round(delta)
    dist = np.linalg.norm(delta @ matrix, axis=1)
    # Prefer the point's own image (general op 0 is the identity) among equally near
    # ones, so snapping a row that is already on its generators changes nothing.
    best = 0 if dist[0] <= dist.min() + 1e-9 else int(np.argmin(dist))
    out = snapped[best] - np.floor(snapped[best])
    out[np.isclose(out, 1.0, atol=1e-12)] = 0.0
    return out, float(dist[best])


def expand_site(wp: WyckoffPosition, xyz: np.ndarray) -> np.ndarray:
    """All ``multiplicity`` fractional positions of the orbit of generator ``xyz``."""
    pos = wp.ops[:, :, :3] @ xyz + wp.ops[:, :, 3]
    return pos - np.floor(pos)
