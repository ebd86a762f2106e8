"""Periodic bond graph of a crystal and the dimensionality of its net.

The graph is the quotient graph: one vertex per atom of the cell and one edge per bond,
labelled by the lattice translation ``t`` (integer 3-vector) such that atom ``i`` in the
home cell is bonded to atom ``j`` in cell ``t``. It is the finite description of the
infinite net that the signature (:mod:`hpcxtal.topology.signature`) walks.

Bonds are found by enumerating every lattice image that can lie within the largest
cutoff (enough image shells for small or skewed cells) and one KD-tree range query;
the per-element-pair cutoff then filters the pairs. Dimensionality follows the standard
construction: a spanning tree of each connected component of the quotient graph puts
every vertex at a translation; every edge then closes a cycle whose net translation is
a lattice vector, and the rank of those vectors is the periodicity of the component.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components
from scipy.spatial import cKDTree

#: The C-C bond (validity) cutoff: 1.2 x the sum of covalent radii 0.78 Å.
CC_CUTOFF_A = 1.872
#: Scale of the sum of covalent radii for element pairs without an explicit cutoff.
COVALENT_SCALE = 1.2


class GraphError(ValueError):
    """A structure whose bond graph cannot be built; the message says why."""


def pair_cutoffs(numbers: np.ndarray, cutoffs: Mapping[tuple[str, str], float] | None = None
                 ) -> np.ndarray:
    """(Zmax+1, Zmax+1) table of bond cutoffs in Å for the elements in ``numbers``.

    ``cutoffs`` maps element-symbol pairs (either order) to a cutoff; C-C defaults to
    :data:`CC_CUTOFF_A`, other pairs to 1.2 x the sum of ASE's covalent radii."""
    from ase.data import atomic_numbers, covalent_radii

    zmax = int(np.max(numbers, initial=6))
    z = np.arange(zmax + 1)
    table = COVALENT_SCALE * (covalent_radii[z][:, None] + covalent_radii[z][None, :])
    rules = {("C", "C"): CC_CUTOFF_A, **dict(cutoffs or {})}
    for (a, b), r in rules.items():
        za, zb = atomic_numbers[a], atomic_numbers[b]
        if za <= zmax and zb <= zmax:
            table[za, zb] = table[zb, za] = float(r)
    return table


@dataclass(frozen=True)
class PeriodicGraph:
    """Quotient graph of a periodic net with translation-labelled directed edges.

    Every bond appears twice, as ``(i, j, t)`` and ``(j, i, -t)``; edges are sorted by
    source, so the neighbours of vertex ``v`` are ``dst[offsets[v]:offsets[v + 1]]``
    reached through translations ``shift[offsets[v]:offsets[v + 1]]``."""

    n: int
    numbers: np.ndarray  # (n,) atomic numbers
    src: np.ndarray  # (E,) int64
    dst: np.ndarray  # (E,) int64
    shift: np.ndarray  # (E, 3) int64

    @property
    def offsets(self) -> np.ndarray:
        """(n + 1,) CSR offsets of each vertex's edges."""
        return np.searchsorted(self.src, np.arange(self.n + 1))

    @property
    def degree(self) -> np.ndarray:
        return np.bincount(self.src, minlength=self.n)

    @property
    def n_bonds(self) -> int:
        return len(self.src) // 2


def bond_graph(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray | None = None,
               cutoffs: Mapping[tuple[str, str], float] | None = None) -> PeriodicGraph:
    """The periodic bond graph of atoms at fractional ``frac`` in the cell whose rows are
    ``lattice`` (Å): bonds shorter than the cutoff of their element pair."""
    lattice = np.asarray(lattice, dtype=float).reshape(3, 3)
    frac = np.asarray(frac, dtype=float).reshape(-1, 3)
    n = len(frac)
    numbers = np.full(n, 6, dtype=np.int64) if numbers is None else np.asarray(numbers, np.int64)
    if n == 0:
        raise GraphError("no atoms")
    volume = abs(np.linalg.det(lattice))
    if not np.isfinite(volume) or volume < 1e-6:
        raise GraphError(f"degenerate cell (volume {volume:.3g} Å^3)")
    table = pair_cutoffs(numbers, cutoffs)
    rmax = float(table[np.ix_(np.unique(numbers), np.unique(numbers))].max())
    # Shift so that positions lie in [0, 1): in-cell differences are then in (-1, 1) and
    # a lattice image within rmax needs |t_k| <= ceil(rmax / plane spacing_k) + 1.
    wrapped = frac - np.floor(frac)
    margin = rmax * np.linalg.norm(np.linalg.inv(lattice), axis=0)  # per axis, fractional
    reach = np.ceil(margin).astype(int) + 1
    if np.prod(2 * reach + 1) * n > 5_000_000:
        raise GraphError(f"cell too thin for the {rmax} Å cutoff ({reach} image shells)")
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    images = np.stack([g.ravel() for g in grids], axis=1)  # (M, 3)
    # Only image atoms within the cutoff slab around the home cell can bond to it.
    image_frac = (images[:, None, :] + wrapped[None, :, :]).reshape(-1, 3)
    near = np.flatnonzero(np.all((image_frac >= -margin) & (image_frac <= 1 + margin), axis=1))
    pairs = cKDTree(wrapped @ lattice).sparse_distance_matrix(
        cKDTree(image_frac[near] @ lattice), rmax, output_type="ndarray")
    i = pairs["i"].astype(np.int64)
    m, j = np.divmod(near[pairs["j"]], n)
    dist = pairs["v"]
    shift = images[m] + (np.floor(frac[i]) - np.floor(frac[j])).astype(np.int64)
    keep = (dist <= table[numbers[i], numbers[j]]) & ~((i == j) & np.all(images[m] == 0, axis=1))
    i, j, shift = i[keep], j[keep], shift[keep]
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    return PeriodicGraph(n, numbers, i[order], j[order], shift[order])


def graph_of_atoms(atoms, cutoffs: Mapping[tuple[str, str], float] | None = None
                   ) -> PeriodicGraph:
    """:func:`bond_graph` of ASE Atoms."""
    return bond_graph(np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=False),
                      atoms.numbers, cutoffs)


@dataclass(frozen=True)
class Components:
    """Connected components of the quotient graph, the periodicity of each and, for
    3-periodic ones, how many disjoint (interpenetrating) nets each one holds."""

    labels: np.ndarray  # (n,) component of each vertex
    dimensions: np.ndarray  # (n_components,) 0..3
    copies: np.ndarray  # (n_components,) index of the cycle lattice in Z^3; 0 unless 3-periodic

    @property
    def dimension(self) -> int:
        """The largest periodicity of any component (0 for an empty graph)."""
        return int(self.dimensions.max(initial=0))

    @property
    def uniform(self) -> bool:
        """Whether all components have the same periodicity."""
        return bool(len(np.unique(self.dimensions)) <= 1)


def components(graph: PeriodicGraph) -> Components:
    """Components of ``graph`` and their dimensionality (rank of cycle translations)."""
    n = graph.n
    adj = coo_matrix((np.ones(len(graph.src)), (graph.src, graph.dst)), shape=(n, n)).tocsr()
    n_comp, labels = connected_components(adj, directed=False)
    # One BFS from a virtual root joined to the first vertex of every component gives a
    # spanning forest; each vertex is then placed at the sum of the translations on its
    # tree path (pointer jumping, log2(depth) vectorised steps).
    firsts = np.unique(labels, return_index=True)[1]
    rooted = coo_matrix((np.ones(len(graph.src) + n_comp),
                         (np.concatenate([graph.src, np.full(n_comp, n)]),
                          np.concatenate([graph.dst, firsts]))), shape=(n + 1, n + 1)).tocsr()
    _, pred = breadth_first_order(rooted, n, directed=False)
    parent = pred[:n].copy()
    parent[firsts] = -1
    tree_edge = np.flatnonzero(parent[graph.dst] == graph.src)
    child, first = np.unique(graph.dst[tree_edge], return_index=True)
    position = np.zeros((n, 3), dtype=np.int64)
    position[child] = graph.shift[tree_edge[first]]
    up = parent.copy()
    while np.any(up >= 0):
        moving = up >= 0
        position[moving] += position[up[moving]]
        up[moving] = up[up[moving]]
    cycles = position[graph.src] + graph.shift - position[graph.dst]
    dims = np.zeros(n_comp, dtype=np.int64)
    copies = np.zeros(n_comp, dtype=np.int64)
    periodic = np.any(cycles != 0, axis=1)
    for c in np.unique(labels[graph.src[periodic]]):
        basis = lattice_basis(cycles[periodic & (labels[graph.src] == c)])
        dims[c] = len(basis)
        if len(basis) == 3:
            copies[c] = abs(round(np.linalg.det(basis.astype(float))))
    return Components(labels, dims, copies)


def lattice_basis(vectors: np.ndarray) -> np.ndarray:
    """(rank, 3) integer basis (Hermite normal form rows) of the lattice that integer
    ``vectors`` (k, 3) generate; Euclid's algorithm, vectorised over rows."""
    rows = np.asarray(vectors, dtype=np.int64).reshape(-1, 3)
    rows = rows[np.any(rows != 0, axis=1)]
    basis = []
    for col in range(3):
        while True:
            nonzero = np.flatnonzero(rows[:, col])
            if len(nonzero) == 0:
                break
            pivot = nonzero[np.argmin(np.abs(rows[nonzero, col]))]
            others = nonzero[nonzero != pivot]
            if len(others) == 0:
                basis.append(rows[pivot])
                rows = np.delete(rows, pivot, axis=0)
                break
            rows[others] -= (rows[others, col] // rows[pivot, col])[:, None] * rows[pivot]
        rows = rows[np.any(rows != 0, axis=1)]
    return np.array(basis, dtype=np.int64).reshape(-1, 3)
