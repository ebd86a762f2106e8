"""Neighbour lists for batched models: built fresh per call, or kept per structure
across the steps of a relaxation (Verlet lists with a skin).

A Verlet list holds every pair within ``cutoff + skin`` at the geometry it was built
for (positions ``r0``, cell ``C0``); each call keeps the pairs now within ``cutoff``.
It is still complete while no pair from outside it can have come within the cutoff.
With ``A = C0^-1 C`` (the cell's change) and ``u = r - r0 A`` (each atom's move beyond
the affine one), a pair vector ``p0`` becomes ``p0 A + u_j - u_i``, so no pair that
started beyond ``cutoff + skin`` is now within ``cutoff`` while
``sigma_min(A) (cutoff + skin) - 2 max |u| >= cutoff``: with a fixed cell, no atom moved
more than half the skin. A structure whose list fails this is rebuilt; the edges are the
same set a fresh build gives (in another order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def neighbour_pairs(positions: np.ndarray, cell: np.ndarray,
                    cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(2, E)`` (sender, receiver) within ``cutoff`` Å of one periodic
    structure and their unit-cell shifts ``(E, 3)``, self-pairs in the same cell left out
    (mace's own neighbour search)."""
    from mace.data.neighborhood import get_neighborhood

    pairs, _, unit_shifts, _ = get_neighborhood(positions, cutoff, (True, True, True), cell.copy())
    return pairs, unit_shifts


@dataclass
class Edges:
    """A batch's graph: pairs ``(2, E)`` (batch-wide atom indices), unit shifts
    ``(E, 3)`` and each structure's shortest pair distance ``(N,)`` (``inf`` if none)."""

    pairs: torch.Tensor
    unit_shifts: torch.Tensor
    min_distance: torch.Tensor


def _pair_lengths(pairs: torch.Tensor, unit_shifts: torch.Tensor, positions: torch.Tensor,
                  cells: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """(E,) lengths of ``pairs`` with ``unit_shifts`` at ``positions`` and ``cells``."""
    shift = torch.einsum("ej,ejk->ek", unit_shifts, cells[batch[pairs[0]]])
    return (positions[pairs[1]] - positions[pairs[0]] + shift).norm(dim=1)


def _shortest(lengths: torch.Tensor, pairs: torch.Tensor, batch: torch.Tensor,
              n: int) -> torch.Tensor:
    """(n,) shortest of ``lengths`` per structure (``inf`` where it has no pair)."""
    out = torch.full((n,), float("inf"), dtype=lengths.dtype, device=lengths.device)
    return out.scatter_reduce(0, batch[pairs[0]], lengths, "amin", include_self=True)


def fresh_edges(positions: torch.Tensor, cells: torch.Tensor, batch: torch.Tensor,
                cutoff: float) -> Edges:
    """The graph of a batch, every structure's neighbour list built anew."""
    counts = torch.bincount(batch, minlength=len(cells)).tolist()
    pos = positions.detach().cpu().double().numpy()
    cel = cells.detach().cpu().double().numpy()
    pairs, shifts, lo = [], [], 0
    for i, c in enumerate(counts):
        p, s = neighbour_pairs(pos[lo:lo + c], cel[i], cutoff)
        pairs.append(p + lo)
        shifts.append(s)
        lo += c
    device, dtype = positions.device, positions.dtype
    pairs_t = torch.as_tensor(np.concatenate(pairs, axis=1), dtype=torch.long, device=device)
    shifts_t = torch.as_tensor(np.concatenate(shifts), dtype=dtype, device=device)
    lengths = _pair_lengths(pairs_t, shifts_t, positions.detach(), cells.detach(), batch)
    return Edges(pairs_t, shifts_t, _shortest(lengths, pairs_t, batch, len(cells)))


@dataclass
class _Stored:
    """One structure's Verlet list: the geometry it was built for, and its pairs."""

    positions: torch.Tensor  # (n, 3)
    cell_inv: torch.Tensor  # (3, 3)
    pairs: torch.Tensor  # (2, P), indices within the structure
    unit_shifts: torch.Tensor  # (P, 3)


class VerletLists:
    """Per-structure neighbour lists within ``cutoff + skin_A``, kept across calls under
    a caller's key (e.g. a structure's index in a relaxation) and rebuilt only when the
    structure moved too far for them (see the module docstring)."""

    def __init__(self, cutoff: float, skin_A: float):
        if skin_A <= 0:
            raise ValueError(f"skin_A must be positive, got {skin_A}")
        self.cutoff, self.skin = cutoff, skin_A
        self.lists: dict[int, _Stored] = {}
        self.builds = 0

    def _valid(self, keys: list[int], positions: torch.Tensor, cells: torch.Tensor,
               batch: torch.Tensor, counts: list[int]) -> list[bool]:
        """Per structure: whether its stored list (if any) still holds every pair."""
        have = [k in self.lists and len(self.lists[k].positions) == c for k, c in zip(keys, counts)]
        if not any(have):
            return have
        ref = torch.cat([self.lists[k].positions if h else positions[batch == i]
                         for i, (k, h) in enumerate(zip(keys, have))])
        inv = torch.stack([self.lists[k].cell_inv if h else torch.linalg.inv(cells[i])
                           for i, (k, h) in enumerate(zip(keys, have))])
        affine = inv @ cells  # A = C0^-1 C
        moved = (positions - torch.einsum("ij,ijk->ik", ref, affine[batch])).norm(dim=1)
        most = torch.zeros(len(keys), dtype=moved.dtype, device=moved.device)
        most = most.scatter_reduce(0, batch, moved, "amax", include_self=True)
        stretch = torch.linalg.svdvals(affine)[:, -1]
        ok = (stretch * (self.cutoff + self.skin) - 2 * most >= self.cutoff).tolist()
        return [h and o for h, o in zip(have, ok)]

    def edges(self, keys: list[int], positions: torch.Tensor, cells: torch.Tensor,
              batch: torch.Tensor) -> Edges:
        """The graph of a batch whose structures are ``keys``: stored lists reused where
        still valid, rebuilt where not; lists of keys not in this batch are dropped."""
        positions, cells = positions.detach(), cells.detach()
        counts = torch.bincount(batch, minlength=len(cells)).tolist()
        valid = self._valid(keys, positions, cells, batch, counts)
        self.lists = {k: self.lists[k] for k, v in zip(keys, valid) if v}
        offsets = np.concatenate([[0], np.cumsum(counts)])
        pairs, shifts = [], []
        for i, k in enumerate(keys):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            if k not in self.lists:
                p, s = neighbour_pairs(positions[lo:hi].cpu().double().numpy(),
                                       cells[i].cpu().double().numpy(), self.cutoff + self.skin)
                self.lists[k] = _Stored(
                    positions[lo:hi].clone(), torch.linalg.inv(cells[i]),
                    torch.as_tensor(p, dtype=torch.long, device=positions.device),
                    torch.as_tensor(s, dtype=positions.dtype, device=positions.device))
                self.builds += 1
            pairs.append(self.lists[k].pairs + lo)
            shifts.append(self.lists[k].unit_shifts)
        pairs_t, shifts_t = torch.cat(pairs, dim=1), torch.cat(shifts)
        lengths = _pair_lengths(pairs_t, shifts_t, positions, cells, batch)
        near = lengths < self.cutoff
        pairs_t, shifts_t, lengths = pairs_t[:, near], shifts_t[near], lengths[near]
        return Edges(pairs_t, shifts_t, _shortest(lengths, pairs_t, batch, len(cells)))
