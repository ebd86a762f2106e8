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
    volume = abs(np.linalg.det(lattice))
    if not np.isfinite(volume) or volume < 1e-6:
        raise GraphError(f"degenerate cell (volume {volume:.3g} Å^3)")
    table = pair_cutoffs(numbers, cutoffs)
    rmax = float(table[np.ix_(np.unique(numbers), np.unique(numbers))].max())
    # Shift so that positions lie in [0, 1): in-cell differences are then in (-1, 1) and
    # a lattice image within rmax needs |t_k| <= ceil(rmax / plane spacing_k) + 1.
    wrapped = frac - np.floor(frac)
    reach = np.ceil(rmax * np.linalg.norm(np.linalg.inv(lattice), axis=0)).astype(int) + 1
    if np.prod(2 * reach + 1) * n > 5_000_000:
        raise GraphError(f"cell too thin for the {rmax} Å cutoff ({reach} image shells)")
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    images = np.stack([g.ravel() for g in grids], axis=1)  # (M, 3)
    cart = wrapped @ lattice
    image_cart = (images @ lattice)[:, None, :] + cart[None, :, :]  # (M, n, 3)
    pairs = cKDTree(cart).sparse_distance_matrix(
        cKDTree(image_cart.reshape(-1, 3)), rmax, output_type="ndarray")
    i = pairs["i"].astype(np.int64)
    m, j = np.divmod(pairs["j"].astype(np.int64), n)
    dist = pairs["v"]
    shift = images[m] + (np.floor(frac[i]) - np.floor(frac[j])).astype(np.int64)
    keep = (dist <= table[numbers[i], numbers[j]]) & ~((i == j) & np.all(images[m] == 0, axis=1))
    i, j, shift = i[keep], j[keep], shift[keep]
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    return PeriodicGraph(n, i[order], j[order], shift[order])


def graph_of_atoms(atoms, cutoffs: Mapping[tuple[str, str], float] | None = None
                   ) -> PeriodicGraph:
    """:func:`bond_graph` of ASE Atoms."""
    return bond_graph(np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=False),
                      atoms.numbers, cutoffs)


@dataclass(frozen=True)
class Components:
    """Connected components of the quotient graph and the periodicity of each."""

    labels: np.ndarray  # (n,) component of each vertex
    dimensions: np.ndarray  # (n_components,) 0..3

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
    # Place every vertex at a translation along a BFS spanning tree of its component.
    position = np.zeros((n, 3), dtype=np.int64)
    offsets = graph.offsets
    for root in np.unique(labels, return_index=True)[1]:
        order, pred = breadth_first_order(adj, root, directed=False)
        for v in order[1:]:
            p = pred[v]
            lo, hi = offsets[p], offsets[p + 1]
            k = lo + int(np.flatnonzero(graph.dst[lo:hi] == v)[0])
            position[v] = position[p] + graph.shift[k]
    cycles = position[graph.src] + graph.shift - position[graph.dst]
    dims = np.zeros(n_comp, dtype=np.int64)
    for c in range(n_comp):
        vectors = cycles[labels[graph.src] == c]
        dims[c] = np.linalg.matrix_rank(vectors.astype(float)) if len(vectors) else 0
    return Components(labels, dims)
