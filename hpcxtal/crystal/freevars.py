"""Free variables R of tabular rows and index maps that rebuild crystals from R.

For one (space group, Wyckoff layout) the free variables are the free lattice
parameters of its lattice system followed by the free fractional coordinates of each
occupied site (the non-zero columns of the site generator's linear part). A
:class:`Layout` holds, as numpy arrays, everything needed to rebuild the cell
parameters and every atom's fractional position from R: which R entry feeds which
cell parameter, and per atom one affine map ``frac = M x + c`` composed from the orbit
operation and the site generator, where ``x`` is the site's free coordinates scattered
into a 3-vector. Layouts are cached; batches (see :mod:`hpcxtal.descriptor.batch`)
concatenate them so that rebuilding is a gather and one batched matrix product.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hpcxtal.crystal.symmetry import space_group

#: Kinds of free variables (the ``kind`` arrays): padding, lengths (Å), angles
#: (degrees), fractional coordinates.
PAD, LENGTH, ANGLE, COORD = 0, 1, 2, 3

#: Per lattice system: for each of (a, b, c, alpha, beta, gamma) the index of the free
#: lattice parameter that sets it, or -1 for a fixed value; the fixed values; and the
#: cell parameter each free lattice parameter is read from.
_LATTICE_MAPS = {
    "triclinic": ((0, 1, 2, 3, 4, 5), (0, 0, 0, 0, 0, 0), (0, 1, 2, 3, 4, 5)),
    "monoclinic": ((0, 1, 2, -1, 3, -1), (0, 0, 0, 90, 0, 90), (0, 1, 2, 4)),
    "orthorhombic": ((0, 1, 2, -1, -1, -1), (0, 0, 0, 90, 90, 90), (0, 1, 2)),
    "tetragonal": ((0, 0, 1, -1, -1, -1), (0, 0, 0, 90, 90, 90), (0, 2)),
    "trigonal": ((0, 0, 1, -1, -1, -1), (0, 0, 0, 90, 90, 120), (0, 2)),
    "hexagonal": ((0, 0, 1, -1, -1, -1), (0, 0, 0, 90, 90, 120), (0, 2)),
    "cubic": ((0, 0, 0, -1, -1, -1), (0, 0, 0, 90, 90, 90), (0,)),
}


@dataclass(frozen=True)
class Layout:
    """Index maps of one (space group, Wyckoff layout); all arrays read-only."""

    spg: int
    wps: tuple[int, ...]  # occupied Wyckoff indices, slot order
    kind: np.ndarray  # (D,) PAD/LENGTH/ANGLE/COORD of each free variable
    lat_src: np.ndarray  # (6,) R index setting each cell parameter, -1 = fixed
    lat_const: np.ndarray  # (6,) fixed cell parameters (degrees)
    r_from_cell: np.ndarray  # (n_lat,) cell parameter each lattice variable is read from
    r_from_xyz: np.ndarray  # (n_coord, 2) (slot, axis) each coordinate variable is read from
    site_src: np.ndarray  # (S, 3) R index of each site's x, y, z, -1 = not free
    site_A: np.ndarray  # (S, 3, 3) generator linear parts
    site_t: np.ndarray  # (S, 3) generator translations
    site_mult: np.ndarray  # (S,) multiplicities
    atom_site: np.ndarray  # (N,) site of each atom
    atom_M: np.ndarray  # (N, 3, 3) frac = M x + c, x = site free coordinates (zeros elsewhere)
    atom_c: np.ndarray  # (N, 3)

    @property
    def n_free(self) -> int:
        return len(self.kind)

    @property
    def n_atoms(self) -> int:
        return len(self.atom_site)

    def free_variables(self, cell: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """R of rows of this layout: ``cell`` (n, 6), ``xyz`` (n, 8, 3) -> (n, D)."""
        cell = np.asarray(cell, dtype=float).reshape(-1, 6)
        xyz = np.asarray(xyz, dtype=float).reshape(len(cell), -1, 3)
        lat = cell[:, self.r_from_cell]
        coords = xyz[:, self.r_from_xyz[:, 0], self.r_from_xyz[:, 1]]
        return np.concatenate([lat, coords], axis=1)


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


@lru_cache(maxsize=4096)
def layout(spg: int, wps: tuple[int, ...]) -> Layout:
    """The cached index maps of space group ``spg`` with occupied Wyckoff indices ``wps``
    (slot order, no padding)."""
    group = space_group(spg)
    lat_src, lat_const, r_from_cell = (np.array(v) for v in _LATTICE_MAPS[group.system])
    n_lat = len(r_from_cell)
    kind = [LENGTH if k < 3 else ANGLE for k in r_from_cell]
    r_from_xyz, site_src, site_A, site_t, site_mult = [], [], [], [], []
    atom_site, atom_M, atom_c = [], [], []
    for slot, w in enumerate(wps):
        if not 0 <= w < len(group.wyckoff):
            raise ValueError(f"Wyckoff index {w} not in space group {spg}")
        wp = group.wyckoff[w]
        a, t = wp.generator[:, :3], wp.generator[:, 3]
        src = -np.ones(3, dtype=np.int64)
        for axis in np.flatnonzero(wp.free):
            src[axis] = n_lat + len(r_from_xyz)
            r_from_xyz.append((slot, axis))
            kind.append(COORD)
        site_src.append(src)
        site_A.append(a)
        site_t.append(t)
        site_mult.append(wp.multiplicity)
        ops = wp.ops
        atom_M.append(ops[:, :, :3] @ a)
        atom_c.append(ops[:, :, :3] @ t + ops[:, :, 3])
        atom_site.append(np.full(wp.multiplicity, slot))
    out = Layout(
        spg=spg,
        wps=tuple(wps),
        kind=np.array(kind, dtype=np.int8),
        lat_src=lat_src.astype(np.int64),
        lat_const=lat_const.astype(float),
        r_from_cell=r_from_cell.astype(np.int64),
        r_from_xyz=np.array(r_from_xyz, dtype=np.int64).reshape(-1, 2),
        site_src=np.array(site_src, dtype=np.int64).reshape(-1, 3),
        site_A=np.array(site_A, dtype=float).reshape(-1, 3, 3),
        site_t=np.array(site_t, dtype=float).reshape(-1, 3),
        site_mult=np.array(site_mult, dtype=np.int64),
        atom_site=np.concatenate(atom_site) if atom_site else np.zeros(0, np.int64),
        atom_M=np.concatenate(atom_M) if atom_M else np.zeros((0, 3, 3)),
        atom_c=np.concatenate(atom_c) if atom_c else np.zeros((0, 3)),
    )
    _readonly(out.kind, out.lat_src, out.lat_const, out.r_from_cell, out.r_from_xyz,
              out.site_src, out.site_A, out.site_t, out.site_mult, out.atom_site,
              out.atom_M, out.atom_c)
    return out


def row_layout(spg: int, wps: np.ndarray) -> Layout:
    """Layout of a row given its (8,) Wyckoff column (-1 = empty slot)."""
    return layout(int(spg), tuple(int(w) for w in np.asarray(wps) if w >= 0))
