"""Vertex orbits of a periodic bond graph under the crystal's verified symmetry.

Symmetry-equivalent atoms have equal net invariants, so the signature walks start from
one atom per orbit only. The operations come from spglib at a tight tolerance, and each
is kept only if it maps the bond graph onto itself (every bond, with its lattice
translation), so a tolerance that merges atoms the bonds tell apart cannot change a
signature; it only makes it cheaper. The verified pure translations also give the
number of atoms per primitive cell.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from hpcxtal.topology.graph import PeriodicGraph

#: spglib tolerance (Å) for candidate operations; every operation is verified on the graph.
SYMPREC_A = 1e-3


@dataclass(frozen=True)
class Orbits:
    """Orbit label of each atom and the number of lattice translations of the cell."""

    labels: np.ndarray  # (n,) int64, 0..n_orbits-1
    n_translations: int

    @property
    def representatives(self) -> np.ndarray:
        """The first atom of each orbit."""
        return np.unique(self.labels, return_index=True)[1]

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels)

    @property
    def n_prim(self) -> int:
        """Atoms per primitive cell."""
        return len(self.labels) // self.n_translations


def trivial_orbits(n: int) -> Orbits:
    """Every atom its own orbit (no symmetry used)."""
    return Orbits(np.arange(n, dtype=np.int64), 1)


def vertex_orbits(graph: PeriodicGraph, lattice: np.ndarray, frac: np.ndarray,
                  numbers: np.ndarray | None = None, symprec: float = SYMPREC_A) -> Orbits:
    """Orbits of the atoms under the symmetry operations that are automorphisms of
    ``graph`` (built from the same ``lattice`` and ``frac``)."""
    import spglib

    n = graph.n
    lattice = np.asarray(lattice, dtype=float)
    frac = np.asarray(frac, dtype=float)
    numbers = np.full(n, 6) if numbers is None else np.asarray(numbers)
    with warnings.catch_warnings():  # spglib 2.x warns about its legacy error handling
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            sym = spglib.get_symmetry((lattice, frac, numbers), symprec=symprec)
        except getattr(spglib, "SpglibError", RuntimeError):
            sym = None
    if sym is None:
        return trivial_orbits(n)
    rot = np.asarray(sym["rotations"], dtype=np.int64)
    trans = np.asarray(sym["translations"], dtype=float)
    n_ops = len(rot)
    # Image of every atom under every operation, matched to an atom in fractional space.
    moved = frac[None] @ rot.transpose(0, 2, 1) + trans[:, None, :]  # (ops, n, 3)
    tol = 10 * symprec * np.linalg.norm(np.linalg.inv(lattice), axis=0).max()
    tree = cKDTree(_unit(frac), boxsize=1.0)
    dist, perm = tree.query(_unit(moved.reshape(-1, 3)))
    perm = perm.reshape(n_ops, n)
    found = (dist.reshape(n_ops, n) <= tol).all(axis=1)
    found &= (np.sort(perm, axis=1) == np.arange(n)).all(axis=1)  # a permutation
    found &= (numbers[perm] == numbers[None, :]).all(axis=1)
    lat_shift = np.rint(moved - frac[perm]).astype(np.int64)  # (ops, n, 3)
    edges = np.sort(_edge_keys(graph.src, graph.dst, graph.shift, n))
    cand = np.flatnonzero(found)
    # Bond (i, j, t) maps to (perm i, perm j, R t + L_j - L_i) where atom i lands on
    # atom perm i shifted by the lattice vector L_i.
    perm_k, lat_k = perm[cand], lat_shift[cand]  # (k, n), (k, n, 3)
    new_shift = (graph.shift[None] @ rot[cand].transpose(0, 2, 1)
                 + lat_k[:, graph.dst] - lat_k[:, graph.src])  # (k, E, 3)
    mapped = np.sort(_edge_keys(perm_k[:, graph.src], perm_k[:, graph.dst], new_shift, n), axis=1)
    good = cand[np.all(mapped == edges[None, :], axis=1)]
    n_translations = int(np.all(rot[good] == np.eye(3, dtype=np.int64), axis=(1, 2)).sum())
    # The verified operations form a group, so the smallest image of an atom names its orbit.
    labels = np.unique(perm[good].min(axis=0), return_inverse=True)[1]
    return Orbits(labels.astype(np.int64).reshape(n), max(n_translations, 1))


def _unit(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates wrapped into [0, 1) (rounding never gives 1.0)."""
    out = frac - np.floor(frac)
    return np.where(out >= 1.0, 0.0, out)


def _edge_keys(src: np.ndarray, dst: np.ndarray, shift: np.ndarray, n: int) -> np.ndarray:
    """Integer keys of directed edges (shifts must lie within +-1000)."""
    s = shift + 1000
    return (((src * n + dst) * 2001 + s[..., 0]) * 2001 + s[..., 1]) * 2001 + s[..., 2]
