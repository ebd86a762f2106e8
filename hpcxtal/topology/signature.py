"""A canonical, cell-independent signature of a periodic net, hashed to a short key.

Each vertex gets an invariant of the infinite net around it:

- its **coordination sequence** to ``depth`` (number of vertices at graph distance
  1, 2, ..., depth), from a breadth-first walk over (vertex, lattice translation) pairs;
- its **ring invariant**: for every pair of edges at the vertex (every angle), the
  length of the shortest cycle through both edges and the number of such cycles
  (Wells' circuit symbol with multiplicities), sorted;
- its element, the periodicity of its connected component and, for a 3-periodic
  component, the share of all atoms that lie in that one connected net (1/2 for each
  of two interpenetrating copies), which coordination sequences cannot see.

The net's signature is the multiset of vertex invariants with their relative
frequencies (count / number of atoms, as an exact fraction), so it does not depend on
the cell (supercells, subgroup settings), the origin, the order of atoms or small
distortions that keep the bonds. Its SHA-256, cut to :data:`KEY_HEX` hex digits, is the
topology key. Both walks run for all start vertices at once as sorted integer-key
set operations in numpy (no Python loop over vertices or neighbours); each shell of the
walk is the neighbours of the current shell minus the current and previous shells,
which is exact for undirected graphs and needs no visited set.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

import numpy as np

from hpcxtal.topology.graph import PeriodicGraph, bond_graph, components
from hpcxtal.topology.orbits import SYMPREC_A, Orbits, trivial_orbits, vertex_orbits

#: Default depth of the coordination sequences.
DEFAULT_DEPTH = 12
#: Default longest cycle searched for the ring invariant (0 = none found up to it).
DEFAULT_MAX_RING = 12
#: Most bonds per atom a signature is computed for (denser graphs are not sp2/sp3 nets
#: and their walks grow too fast to be a cheap filter).
MAX_DEGREE = 16
#: Most (walk, vertex, translation) nodes one walk step may generate.
MAX_NODES = 4_000_000
#: Hex digits of the topology key (64 bits).
KEY_HEX = 16


class SignatureError(ValueError):
    """A net whose signature cannot be computed within the set limits."""


@dataclass(frozen=True)
class Signature:
    """The topology of one structure: key, dimensionality and the invariants behind it."""

    key: str
    dimension: int  # largest periodicity of a component, 0..3
    uniform: bool  # all components have the same periodicity
    n_prim: int  # atoms per primitive cell (the cell's atoms where no symmetry was used)
    #: (element, component periodicity, component share, coordination sequence,
    #: ring invariant, fraction of atoms) for each distinct vertex invariant, sorted.
    vertices: tuple[tuple[int, int, Fraction, tuple[int, ...], tuple[tuple[int, int], ...],
                          Fraction], ...]


class _Nodes:
    """Integer keys for (source, vertex, translation) triples of a walk."""

    def __init__(self, n_sources: int, n: int, reach: int):
        self.n = n
        self.off = reach + 1
        self.base = 2 * reach + 3
        if float(n_sources) * n * self.base ** 3 > 2.0 ** 62:
            raise SignatureError(f"walk too large to encode ({n_sources} walks over {n} "
                                 f"vertices, reach {reach})")

    def encode(self, src: np.ndarray, v: np.ndarray, t: np.ndarray) -> np.ndarray:
        b, o = self.base, self.off
        return (((src * self.n + v) * b + (t[:, 0] + o)) * b + (t[:, 1] + o)) * b + (t[:, 2] + o)

    def decode(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, o = self.base, self.off
        rest, t2 = np.divmod(keys, b)
        rest, t1 = np.divmod(rest, b)
        rest, t0 = np.divmod(rest, b)
        src, v = np.divmod(rest, self.n)
        return src, v, np.stack([t0, t1, t2], axis=1) - o


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in the sorted array ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _expand(graph: PeriodicGraph, offsets: np.ndarray, src: np.ndarray, v: np.ndarray,
            t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All neighbours of the nodes (src, v, t): their (src, v, t) and the parent index."""
    deg = offsets[v + 1] - offsets[v]
    parent = np.repeat(np.arange(len(v)), deg)
    first = np.cumsum(deg) - deg
    edge = offsets[v][parent] + np.arange(len(parent)) - first[parent]
    return src[parent], graph.dst[edge], t[parent] + graph.shift[edge], parent


def _reach(graph: PeriodicGraph, steps: int) -> int:
    return steps * int(np.abs(graph.shift).max(initial=0)) + 1


def coordination_sequences(graph: PeriodicGraph, depth: int = DEFAULT_DEPTH,
                           starts: np.ndarray | None = None,
                           max_nodes: int = MAX_NODES) -> np.ndarray:
    """(len(starts), depth) coordination sequences of vertices ``starts`` (default all)."""
    n = graph.n
    v = np.arange(n, dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
    n_src = len(v)
    nodes = _Nodes(n_src, n, _reach(graph, depth))
    offsets = graph.offsets
    src = np.arange(n_src, dtype=np.int64)
    t = np.zeros((n_src, 3), dtype=np.int64)
    current = nodes.encode(src, v, t)
    previous = np.zeros(0, dtype=np.int64)
    cs = np.zeros((n_src, depth), dtype=np.int64)
    for k in range(depth):
        s2, v2, t2, _ = _expand(graph, offsets, src, v, t)
        if len(s2) > max_nodes:
            raise SignatureError(f"coordination shell {k + 1} too large ({len(s2)} nodes)")
        keys = np.unique(nodes.encode(s2, v2, t2))
        keys = keys[~(_member(current, keys) | _member(previous, keys))]
        src, v, t = nodes.decode(keys)
        cs[:, k] = np.bincount(src, minlength=n_src)
        previous, current = current, keys
    return cs


def ring_invariants(graph: PeriodicGraph, max_ring: int = DEFAULT_MAX_RING,
                    starts: np.ndarray | None = None,
                    max_nodes: int = MAX_NODES) -> list[tuple[tuple[int, int], ...]]:
    """Per vertex of ``starts`` (default all), the sorted (length, count) of the shortest
    cycles through each pair of its edges; (0, 0) where none is <= ``max_ring`` long."""
    n = graph.n
    starts = np.arange(n, dtype=np.int64) if starts is None else np.asarray(starts, np.int64)
    offsets = graph.offsets
    # One walk per angle: from the far end of edge e1 to the far end of edge e2 of the
    # same vertex, never through that vertex itself.
    deg = graph.degree
    e1_list, e2_list = [], []
    for d in np.unique(deg[starts][deg[starts] >= 2]):
        a, b = np.triu_indices(int(d), k=1)
        verts = starts[deg[starts] == d]
        e1_list.append((offsets[verts][:, None] + a[None, :]).ravel())
        e2_list.append((offsets[verts][:, None] + b[None, :]).ravel())
    if not e1_list:
        return [() for _ in starts]
    e1, e2 = np.concatenate(e1_list), np.concatenate(e2_list)
    n_src = len(e1)
    steps = max(max_ring - 2, 0)
    nodes = _Nodes(n_src, n, _reach(graph, steps + 1))
    ids = np.arange(n_src, dtype=np.int64)
    zero = np.zeros((n_src, 3), dtype=np.int64)
    banned = np.sort(nodes.encode(ids, graph.src[e1], zero))
    target = nodes.encode(ids, graph.dst[e2], graph.shift[e2])
    length = np.zeros(n_src, dtype=np.int64)
    count = np.zeros(n_src, dtype=np.int64)

    src, v, t = ids, graph.dst[e1], graph.shift[e1]
    paths = np.ones(n_src, dtype=np.int64)
    current = nodes.encode(src, v, t)
    order = np.argsort(current)
    current, src, v, t, paths = current[order], src[order], v[order], t[order], paths[order]
    previous = np.zeros(0, dtype=np.int64)
    for dist in range(1, steps + 1):
        s2, v2, t2, parent = _expand(graph, offsets, src, v, t)
        if len(s2) > max_nodes:
            raise SignatureError(f"ring walk step {dist} too large ({len(s2)} nodes)")
        keys, inverse = np.unique(nodes.encode(s2, v2, t2), return_inverse=True)
        summed = np.bincount(inverse, weights=paths[parent], minlength=len(keys))
        keep = ~(_member(current, keys) | _member(previous, keys) | _member(banned, keys))
        keys, summed = keys[keep], summed[keep]
        hit = _member(keys, target) & (length == 0)
        if hit.any():
            pos = np.searchsorted(keys, target[hit])
            length[hit] = dist + 2
            count[hit] = np.rint(summed[pos]).astype(np.int64)
        s_all = nodes.decode(keys)[0]
        alive = length[s_all] == 0
        previous, current = current, keys[alive]
        src, v, t = nodes.decode(current)
        paths = summed[alive]
        if len(current) == 0:
            break
    slot = np.full(n, -1, dtype=np.int64)
    slot[starts] = np.arange(len(starts))
    per_vertex: list[list[tuple[int, int]]] = [[] for _ in starts]
    for o, ln, c in zip(slot[graph.src[e1]].tolist(), length.tolist(), count.tolist()):
        per_vertex[o].append((ln, c))
    return [tuple(sorted(p)) for p in per_vertex]


def _canonical_text(vertices) -> str:
    parts = []
    for z, dim, share, cs, rings, frac in vertices:
        ring_text = ".".join(f"{ln}x{c}" for ln, c in rings)
        parts.append(f"{z}|{dim}|{share}|{'-'.join(map(str, cs))}|{ring_text}|{frac}")
    return ";".join(parts)


def _check_size(graph: PeriodicGraph) -> None:
    if graph.n == 0:
        raise SignatureError("no atoms")
    if graph.degree.max() > MAX_DEGREE:
        raise SignatureError(f"an atom has {graph.degree.max()} bonds (more than {MAX_DEGREE})")


def signature(graph: PeriodicGraph, orbits: Orbits | None = None, depth: int = DEFAULT_DEPTH,
              max_ring: int = DEFAULT_MAX_RING) -> Signature:
    """The topology signature of the net of ``graph`` (see the module docstring); with
    ``orbits`` (graph automorphism orbits) the walks start from one vertex per orbit."""
    _check_size(graph)
    orbits = orbits or trivial_orbits(graph.n)
    reps = orbits.representatives
    cs = coordination_sequences(graph, depth, reps)
    rings = ring_invariants(graph, max_ring, reps)
    comps = components(graph)
    comp = comps.labels[reps]
    comp_size = np.bincount(comps.labels)[comp]
    counts: Counter = Counter()
    for z, dim, n_q, copies, c, r, size in zip(
            graph.numbers[reps].tolist(), comps.dimensions[comp].tolist(), comp_size.tolist(),
            comps.copies[comp].tolist(), map(tuple, cs.tolist()), rings,
            orbits.sizes[orbits.labels[reps]].tolist()):
        share = Fraction(n_q, copies * graph.n) if dim == 3 else Fraction(0)
        counts[z, dim, share, c, r] += size
    vertices = tuple(sorted((*inv, Fraction(k, graph.n)) for inv, k in counts.items()))
    key = hashlib.sha256(_canonical_text(vertices).encode()).hexdigest()[:KEY_HEX]
    return Signature(key, comps.dimension, comps.uniform, orbits.n_prim, vertices)


def structure_signature(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray | None = None,
                        *, cutoffs: Mapping[tuple[str, str], float] | None = None,
                        depth: int = DEFAULT_DEPTH, max_ring: int = DEFAULT_MAX_RING,
                        symprec: float | None = SYMPREC_A) -> Signature:
    """Signature of the structure with cell rows ``lattice`` (Å) and fractional ``frac``;
    ``symprec`` None skips the symmetry shortcut (and reports n_prim = atoms in the cell)."""
    graph = bond_graph(lattice, frac, numbers, cutoffs)
    _check_size(graph)
    orbits = (trivial_orbits(graph.n) if symprec is None
              else vertex_orbits(graph, lattice, frac, numbers, symprec))
    return signature(graph, orbits, depth, max_ring)


def atoms_signature(atoms, **kwargs) -> Signature:
    """:func:`structure_signature` of ASE Atoms."""
    return structure_signature(np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=False),
                               atoms.numbers, **kwargs)
