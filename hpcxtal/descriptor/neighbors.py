"""Batched periodic neighbour lists: chosen centres against all atoms of their structure.

Atoms of many structures are concatenated (``atom_struct`` gives each atom's
structure, atoms of a structure contiguous). For every centre the candidates are all
atoms of its structure in all lattice images that can lie within the cutoff: with
fractional differences wrapped into [-0.5, 0.5], image ``n`` along axis ``k`` is needed
only while ``|n| <= cutoff / h_k + 0.5``, where ``h_k`` is the spacing of the lattice
planes normal to the reciprocal vector ``k``. Small or skewed cells therefore get as
many shells of images as they need (not always 27 images). Candidates are enumerated
in chunks of about ``max_candidates`` so memory stays bounded for any cell.

Each chunk works in two stages: for every (centre, atom) pair the range of images it
needs along each axis follows from the same plane-spacing bound applied to its own
fractional offset (in a large cell most pairs need no image at all), then only those
images are enumerated and their distances computed. The search runs without
gradients; :func:`pair_vectors` then rebuilds the pair vectors from the stored integer
shifts differentiably, so a list can be reused while the geometry moves less than a
skin.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: Candidate (centre, atom, image) triples examined per chunk.
DEFAULT_MAX_CANDIDATES = 1 << 21
#: Lattice images per structure beyond which a cell is not searched (its planes are
#: closer than about cutoff / 10: not a crystal); such structures are flagged.
DEFAULT_MAX_IMAGES = 9261


@dataclass(frozen=True)
class Pairs:
    """Neighbour pairs: ``centre`` indexes the centre list, ``atom`` the atom list,
    ``shift`` (P, 3) the integer lattice translation added to the atom (as floats).
    ``searched`` (B,) is False for structures that were not searched (singular or
    non-finite lattice, or more than ``max_images`` images): they have no pairs."""

    centre: torch.Tensor
    atom: torch.Tensor
    shift: torch.Tensor
    searched: torch.Tensor

    def __len__(self) -> int:
        return int(self.centre.shape[0])


def plane_reach(lattice: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3) ``cutoff * |b_k|``: how far, in fractional units along axis k, a point
    within ``cutoff`` can lie (``|b_k|``, the reciprocal vector without 2 pi, is the
    inverse spacing of lattice planes k); and (B,) False for a singular or non-finite
    lattice. ``lattice`` (B, 3, 3) row vectors."""
    lat = lattice.detach()
    finite = torch.isfinite(lat).all(2).all(1)
    eye = torch.eye(3, dtype=lat.dtype, device=lat.device)
    inv, info = torch.linalg.inv_ex(torch.where(finite[:, None, None], lat, eye))
    reach = cutoff * torch.linalg.norm(inv, dim=1)  # norm of each column of inv
    ok = finite & (info == 0) & torch.isfinite(reach).all(1) & (reach < 2**20).all(1)
    return torch.where(ok[:, None], reach, torch.zeros_like(reach)), ok


def _ragged_arange(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For counts (C,): (owner, local) of sum(counts) items, owner c repeated counts[c]
    times, local 0..counts[c]-1."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum()), device=counts.device) - start[owner]
    return owner, local


@torch.no_grad()
def neighbor_pairs(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    atom_struct: torch.Tensor,
    centre_atom: torch.Tensor,
    cutoff: float,
    *,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> Pairs:
    """All (centre, atom, shift) with distance < ``cutoff`` Å, self-pairs excluded.

    ``frac`` (N, 3) fractional positions (need not be wrapped), ``lattice`` (B, 3, 3),
    ``atom_struct`` (N,) structure of each atom (non-decreasing), ``centre_atom`` (C,)
    the atom index of each centre. Distinct atoms at zero distance are kept (as
    ASE's ``neighbor_list`` does).
    """
    device = frac.device
    n_struct = lattice.shape[0]
    n_atoms = torch.bincount(atom_struct, minlength=n_struct)
    atom_offset = torch.cumsum(n_atoms, 0) - n_atoms
    reach, ok = plane_reach(lattice, cutoff)  # needed images: |delta_k + n_k| <= reach_k
    # images per axis once offsets are wrapped into [-0.5, 0.5]: |n_k| <= reach_k + 0.5
    n_images = (2 * torch.floor(reach + 0.5 + 1e-9).to(torch.long) + 1).prod(1)
    searched = ok & (n_images <= max_images)
    c_struct = atom_struct[centre_atom]
    c_atoms = torch.where(searched[c_struct], n_atoms[c_struct], torch.zeros_like(c_struct))
    # chunks of consecutive centres whose candidates (centre, atom, any image) number about
    # max_candidates (a chunk exceeds it by at most one centre's candidates)
    per_centre = c_atoms * n_images[c_struct]
    start = torch.cumsum(per_centre, 0) - per_centre
    chunk = torch.div(start, max_candidates, rounding_mode="floor")
    _, sizes = torch.unique_consecutive(chunk, return_counts=True)
    bounds = [0] + torch.cumsum(sizes, 0).tolist()
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        # stage 1: (centre, atom) pairs and the images each needs along each axis
        owner, local = _ragged_arange(c_atoms[lo:hi])
        centre = owner + lo
        b = c_struct[centre]
        atom = atom_offset[b] + local
        delta = frac.index_select(0, atom) - frac.index_select(0, centre_atom.index_select(0, centre))
        base = -torch.round(delta)
        wrapped = delta + base
        w = reach[b] + 1e-9  # a hair wider than the bound, against rounding
        first = torch.ceil(-w - wrapped)
        count = (torch.floor(w - wrapped) - first + 1).clamp_min(0).to(torch.long)
        n_pair = count.prod(1)
        need = n_pair > 0
        centre, b, atom, base, first, count, n_pair = (
            v[need] for v in (centre, b, atom, base, first, count, n_pair))
        # stage 2: every needed image of those pairs
        owner, img = _ragged_arange(n_pair)
        cnt = count[owner]
        image = torch.stack([img // (cnt[:, 1] * cnt[:, 2]), (img // cnt[:, 2]) % cnt[:, 1],
                             img % cnt[:, 2]], dim=1).to(frac.dtype) + first[owner]
        centre, b, atom = centre[owner], b[owner], atom[owner]
        shift = base[owner] + image
        c_atom = centre_atom.index_select(0, centre)
        vec = torch.bmm((frac.index_select(0, atom) - frac.index_select(0, c_atom) + shift
                         ).unsqueeze(1), lattice.index_select(0, b)).squeeze(1)
        dist2 = (vec * vec).sum(1)
        is_self = (atom == c_atom) & (shift == 0).all(1)
        keep = (dist2 < cutoff * cutoff) & ~is_self
        parts.append((centre[keep], atom[keep], shift[keep]))
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Pairs(empty, empty, torch.zeros(0, 3, dtype=frac.dtype, device=device), searched)
    return Pairs(*(torch.cat(p) for p in zip(*parts)), searched)


def pair_vectors(pairs: Pairs, frac: torch.Tensor, lattice: torch.Tensor,
                 atom_struct: torch.Tensor, centre_atom: torch.Tensor) -> torch.Tensor:
    """(P, 3) Cartesian vectors from centre to neighbour, differentiable in ``frac``
    and ``lattice``."""
    c_atom = centre_atom[pairs.centre]
    delta = frac[pairs.atom] - frac[c_atom] + pairs.shift
    return torch.bmm(delta.unsqueeze(1), lattice[atom_struct[c_atom]]).squeeze(1)
