"""Batches of tabular rows as one tensor program: R, positions, neighbour pairs.

A :class:`Batch` concatenates the index maps (:mod:`hpcxtal.crystal.freevars`) of its
rows: structures of any space group and layout can share a batch, atoms are joined end
to end with their structure index (no padding of atoms), and the free variables form
one (B, D) tensor R padded with zeros (``kind == PAD``) past each row's own count.
Rebuilding all positions from R is a gather, one batched 3x3 product per atom and one
per structure; nothing loops over structures or atoms in Python.

The centres of the descriptor and the validity check are one representative atom per
Wyckoff site (the generator, orbit operation 0): every atom of a site has the same
environment, so the loss and the check need no more.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from hpcxtal.crystal.freevars import ANGLE, COORD, LENGTH, PAD, row_layout
from hpcxtal.crystal.row import N_SITES, Row
from hpcxtal.descriptor.neighbors import Pairs, neighbor_pairs

if TYPE_CHECKING:
    from hpcxtal.store.table import Table

__all__ = ["Batch", "Geometry", "build_batch", "positions", "cell_parameters",
           "lattice_matrix", "rows_from_R", "neighbors", "take_pairs", "replace_pairs", "PAD",
           "LENGTH", "ANGLE", "COORD"]

@dataclass(frozen=True)
class Batch:
    """Index maps of B rows (S sites, N atoms) as tensors on one device and dtype.

    Per structure: ``spg``, ``wps`` (B, 8) and ``species`` (B, 8) atomic numbers as
    numpy (for writing rows back),
    ``R0`` (B, D) the rows' free variables, ``kind`` (B, D) their kinds,
    ``lat_src``/``lat_const`` (B, 6), ``n_atoms`` (B,). Per site: ``site_struct``,
    ``site_slot`` (row slot), ``site_src`` (S, 3) flat index into R or -1,
    ``site_A``/``site_t`` (generator), ``site_mult``, ``site_atom`` (its
    representative atom). Per atom: ``atom_struct``, ``atom_site``, ``atom_M``,
    ``atom_c`` (frac = M x + c), ``atom_weight`` (the atomic number of its site's
    element: the weight of the species-weighted densities, as pyxtal's SO3).
    """

    spg: np.ndarray
    wps: np.ndarray
    species: np.ndarray
    R0: torch.Tensor
    kind: torch.Tensor
    lat_src: torch.Tensor
    lat_const: torch.Tensor
    n_atoms: torch.Tensor
    site_struct: torch.Tensor
    site_slot: torch.Tensor
    site_src: torch.Tensor
    site_A: torch.Tensor
    site_t: torch.Tensor
    site_mult: torch.Tensor
    site_atom: torch.Tensor
    atom_struct: torch.Tensor
    atom_site: torch.Tensor
    atom_M: torch.Tensor
    atom_c: torch.Tensor
    atom_weight: torch.Tensor

    def __len__(self) -> int:
        return len(self.spg)

    @property
    def n_sites(self) -> int:
        return int(self.site_struct.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.R0.dtype

    @property
    def device(self) -> torch.device:
        return self.R0.device

    def new_R(self) -> torch.Tensor:
        """A fresh leaf copy of the rows' free variables with ``requires_grad``."""
        return self.R0.detach().clone().requires_grad_(True)

    def take(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> "Batch":
        """The structures ``idx`` (in that order) as a new batch, e.g. to drop
        converged rows; R keeps its width D. Rows of the new batch: ``R[idx]``."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device).reshape(-1)
        width = self.R0.shape[1]
        n_struct = len(self)
        sites, atoms = self.members(idx)
        new_struct = torch.full((n_struct,), -1, dtype=torch.long, device=self.device)
        new_struct[idx] = torch.arange(len(idx), device=self.device)
        new_site = torch.full((self.n_sites,), -1, dtype=torch.long, device=self.device)
        new_site[sites] = torch.arange(len(sites), device=self.device)
        new_atom = torch.full((len(self.atom_struct),), -1, dtype=torch.long, device=self.device)
        new_atom[atoms] = torch.arange(len(atoms), device=self.device)

        def flat(src: torch.Tensor) -> torch.Tensor:
            moved = new_struct[torch.div(src.clamp_min(0), width, rounding_mode="floor")] * width \
                + src.clamp_min(0) % width
            return torch.where(src >= 0, moved, src)

        idx_np = idx.cpu().numpy()
        return Batch(
            spg=self.spg[idx_np], wps=self.wps[idx_np], species=self.species[idx_np],
            R0=self.R0[idx], kind=self.kind[idx], lat_src=flat(self.lat_src[idx]),
            lat_const=self.lat_const[idx], n_atoms=self.n_atoms[idx],
            site_struct=new_struct[self.site_struct[sites]], site_slot=self.site_slot[sites],
            site_src=flat(self.site_src[sites]), site_A=self.site_A[sites],
            site_t=self.site_t[sites], site_mult=self.site_mult[sites],
            site_atom=new_atom[self.site_atom[sites]],
            atom_struct=new_struct[self.atom_struct[atoms]], atom_site=new_site[self.atom_site[atoms]],
            atom_M=self.atom_M[atoms], atom_c=self.atom_c[atoms], atom_weight=self.atom_weight[atoms],
        )

    def members(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The site and atom indices of the structures ``idx`` (long), in that order:
        site k / atom k of ``self.take(idx)`` is site ``sites[k]`` / atom ``atoms[k]`` here."""
        n_sites = torch.bincount(self.site_struct, minlength=len(self))
        return (_ranges(torch.cumsum(n_sites, 0) - n_sites, n_sites, idx),
                _ranges(torch.cumsum(self.n_atoms, 0) - self.n_atoms, self.n_atoms, idx))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Batch":
        """The same batch on another device and/or floating dtype."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if v.is_floating_point() and dtype else v.dtype)
            out[f.name] = v
        return Batch(**out)


def _ranges(start: torch.Tensor, count: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Concatenated ``arange(start[i], start[i] + count[i])`` for i in ``idx``."""
    counts = count[idx]
    owner = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), counts)
    offset = torch.cumsum(counts, 0) - counts
    return start[idx][owner] + torch.arange(int(counts.sum()), device=idx.device) - offset[owner]


@dataclass(frozen=True)
class Geometry:
    """Cell parameters (B, 6), lattice (B, 3, 3) row vectors and fractional (N, 3) and
    Cartesian (N, 3) positions of every atom; differentiable in R. Fractional positions
    are not wrapped (continuous in R)."""

    cell: torch.Tensor
    lattice: torch.Tensor
    frac: torch.Tensor
    cart: torch.Tensor


def _table_columns(rows) -> tuple[np.ndarray, ...]:
    """(spg, wps, cell, xyz, species) of a Table or a sequence of Rows."""
    if hasattr(rows, "columns"):  # a Table
        return (np.asarray(rows["spg"]), np.asarray(rows["wps"]), np.asarray(rows["cell"]),
                np.asarray(rows["xyz"]), np.asarray(rows["species"]))
    rows = list(rows)
    return (np.array([r.spg for r in rows]), np.array([r.wps for r in rows]).reshape(-1, N_SITES),
            np.array([r.cell for r in rows], dtype=float).reshape(-1, 6),
            np.array([r.xyz for r in rows], dtype=float).reshape(-1, N_SITES, 3),
            np.array([r.species for r in rows]).reshape(-1, N_SITES))


def build_batch(rows: Table | Sequence[Row], *, dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> Batch:
    """A batch of decoded rows (a :class:`~hpcxtal.store.table.Table` or a sequence of
    :class:`~hpcxtal.crystal.row.Row`), each atom weighted by its site's element.

    Rows must be symmetrised (as :func:`hpcxtal.crystal.row.decode` leaves them, with
    occupied sites packed to the front); sort a table with ``Table.layout_order()``
    first so neighbouring rows share layouts.
    """
    spg, wps, cell, xyz, species = _table_columns(rows)
    if len(spg) == 0:
        raise ValueError("no rows to batch")
    occupied = wps >= 0
    if np.any(occupied[:, 1:] & ~occupied[:, :-1]):
        raise ValueError("rows must have occupied Wyckoff sites packed to the front")
    layouts = [row_layout(s, w) for s, w in zip(spg, wps)]
    n_free = np.array([lay.n_free for lay in layouts])
    width = int(n_free.max())
    R0 = np.zeros((len(spg), width))
    kind = np.zeros((len(spg), width), dtype=np.int8)
    lat_src = np.zeros((len(spg), 6), dtype=np.int64)
    lat_const = np.zeros((len(spg), 6))
    site_parts: dict[str, list] = {k: [] for k in
                                   ("struct", "slot", "src", "A", "t", "mult", "first")}
    atom_parts: dict[str, list] = {k: [] for k in ("struct", "site", "M", "c", "z")}
    n_sites_seen = 0
    n_atoms_seen = 0
    for b, lay in enumerate(layouts):
        R0[b, : lay.n_free] = lay.free_variables(cell[b], xyz[b])[0]
        kind[b, : lay.n_free] = lay.kind
        lat_src[b] = np.where(lay.lat_src >= 0, lay.lat_src + b * width, -1)
        lat_const[b] = lay.lat_const
        n_s = len(lay.site_mult)
        site_parts["struct"].append(np.full(n_s, b))
        site_parts["slot"].append(np.arange(n_s))
        site_parts["src"].append(np.where(lay.site_src >= 0, lay.site_src + b * width, -1))
        site_parts["A"].append(lay.site_A)
        site_parts["t"].append(lay.site_t)
        site_parts["mult"].append(lay.site_mult)
        first = np.concatenate([[0], np.cumsum(lay.site_mult)[:-1]]) + n_atoms_seen
        site_parts["first"].append(first)
        atom_parts["struct"].append(np.full(lay.n_atoms, b))
        atom_parts["site"].append(lay.atom_site + n_sites_seen)
        atom_parts["M"].append(lay.atom_M)
        atom_parts["c"].append(lay.atom_c)
        atom_parts["z"].append(np.asarray(species[b], dtype=np.int64)[lay.atom_site])
        n_sites_seen += n_s
        n_atoms_seen += lay.n_atoms
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def f(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=float), dtype=dtype, device=dev)

    def i(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.int64), device=dev)

    cat = np.concatenate
    atom_struct = cat(atom_parts["struct"])
    return Batch(
        spg=np.asarray(spg, dtype=np.int64),
        wps=np.asarray(wps, dtype=np.int64).copy(),
        species=np.asarray(species, dtype=np.int64).copy(),
        R0=f(R0),
        kind=i(kind),
        lat_src=i(lat_src),
        lat_const=f(lat_const),
        n_atoms=i([lay.n_atoms for lay in layouts]),
        site_struct=i(cat(site_parts["struct"])),
        site_slot=i(cat(site_parts["slot"])),
        site_src=i(cat(site_parts["src"])),
        site_A=f(cat(site_parts["A"])),
        site_t=f(cat(site_parts["t"])),
        site_mult=i(cat(site_parts["mult"])),
        site_atom=i(cat(site_parts["first"])),
        atom_struct=i(atom_struct),
        atom_site=i(cat(atom_parts["site"])),
        atom_M=f(cat(atom_parts["M"])),
        atom_c=f(cat(atom_parts["c"])),
        atom_weight=f(cat(atom_parts["z"])),
    )


def _gather(R: torch.Tensor, src: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
    """``R.flatten()[src]`` where src >= 0, ``fill`` elsewhere."""
    flat = R.reshape(-1)
    vals = flat.index_select(0, src.clamp_min(0).reshape(-1)).reshape(src.shape)
    return torch.where(src >= 0, vals, fill)


def cell_parameters(batch: Batch, R: torch.Tensor) -> torch.Tensor:
    """(B, 6) cell parameters (Å, degrees) set by R and the lattice constraints."""
    return _gather(R, batch.lat_src, batch.lat_const)


def lattice_matrix(cell: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) row-vector lattice matrices from (B, 6) cell parameters, ``a`` along x
    and ``b`` in the xy plane (as :func:`hpcxtal.crystal.symmetry.cell_matrix`).
    Cells of no volume get a clamped, finite matrix; :func:`cell_ok` flags them."""
    a, b, c = cell[:, 0], cell[:, 1], cell[:, 2]
    al, be, ga = (torch.deg2rad(cell[:, k]) for k in (3, 4, 5))
    cos_al, cos_be, cos_ga, sin_ga = torch.cos(al), torch.cos(be), torch.cos(ga), torch.sin(ga)
    cx = cos_be
    cy = (cos_al - cos_be * cos_ga) / sin_ga
    cz = torch.sqrt((1 - cx * cx - cy * cy).clamp_min(1e-12))
    zero = torch.zeros_like(a)
    return torch.stack([
        torch.stack([a, zero, zero], -1),
        torch.stack([b * cos_ga, b * sin_ga, zero], -1),
        torch.stack([c * cx, c * cy, c * cz], -1),
    ], 1)


def cell_ok(cell: torch.Tensor) -> torch.Tensor:
    """(B,) bool: finite, positive lengths, angles giving a cell of positive volume."""
    al, be, ga = (torch.deg2rad(cell[:, k]) for k in (3, 4, 5))
    cx = torch.cos(be)
    cy = (torch.cos(al) - torch.cos(be) * torch.cos(ga)) / torch.sin(ga)
    finite = torch.isfinite(cell).all(1)
    return finite & (cell[:, :3] > 0).all(1) & (1 - cx * cx - cy * cy > 1e-8) & (torch.sin(ga).abs() > 1e-8)


def site_coordinates(batch: Batch, R: torch.Tensor) -> torch.Tensor:
    """(S, 3) free coordinates of each site scattered into a 3-vector (zeros elsewhere)."""
    return _gather(R, batch.site_src, torch.zeros((), dtype=R.dtype, device=R.device))


def positions(batch: Batch, R: torch.Tensor) -> Geometry:
    """Cell, lattice and all atom positions of the batch for free variables R (B, D)."""
    cell = cell_parameters(batch, R)
    lattice = lattice_matrix(cell)
    x = site_coordinates(batch, R).index_select(0, batch.atom_site)  # (N, 3)
    frac = torch.bmm(batch.atom_M, x.unsqueeze(-1)).squeeze(-1) + batch.atom_c
    cart = torch.bmm(frac.unsqueeze(1), lattice.index_select(0, batch.atom_struct)).squeeze(1)
    return Geometry(cell, lattice, frac, cart)


def rows_from_R(batch: Batch, R: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Row columns (cell (B, 6), xyz (B, 8, 3)) for free variables R: each site's
    generator wrapped into [0, 1), -1 in empty slots; ``batch.wps`` and ``batch.spg``
    are unchanged."""
    with torch.no_grad():
        cell = cell_parameters(batch, R)
        x = site_coordinates(batch, R)
        gen = torch.bmm(batch.site_A, x.unsqueeze(-1)).squeeze(-1) + batch.site_t
        gen = gen - torch.floor(gen)
        gen = torch.where(gen >= 1.0, gen - 1.0, gen)
    xyz = -np.ones((len(batch), N_SITES, 3))
    xyz[batch.site_struct.cpu().numpy(), batch.site_slot.cpu().numpy()] = gen.cpu().double().numpy()
    return cell.detach().cpu().double().numpy(), xyz


def neighbors(batch: Batch, R: torch.Tensor, cutoff: float, **kw) -> Pairs:
    """Pairs within ``cutoff`` Å of every site's representative atom (centre k = site k),
    found without gradients for the current R."""
    with torch.no_grad():
        geo = positions(batch, R.detach())
    return neighbor_pairs(geo.frac, geo.lattice, batch.atom_struct, batch.site_atom, cutoff, **kw)


def take_pairs(batch: Batch, pairs: Pairs, idx: torch.Tensor) -> Pairs:
    """The pairs of the structures ``idx`` (ascending), numbered as in ``batch.take(idx)``:
    a list kept when converged rows leave a batch, in the order a search would give."""
    sites, atoms = batch.members(idx)
    new_site = torch.full((batch.n_sites,), -1, dtype=torch.long, device=batch.device)
    new_site[sites] = torch.arange(len(sites), device=batch.device)
    new_atom = torch.full((len(batch.atom_struct),), -1, dtype=torch.long, device=batch.device)
    new_atom[atoms] = torch.arange(len(atoms), device=batch.device)
    keep = new_site[pairs.centre] >= 0
    return Pairs(new_site[pairs.centre[keep]], new_atom[pairs.atom[keep]], pairs.shift[keep],
                 pairs.searched[idx])


def replace_pairs(batch: Batch, pairs: Pairs, idx: torch.Tensor, found: Pairs) -> Pairs:
    """``pairs`` with those of the structures ``idx`` (ascending) replaced by ``found``,
    a list searched on ``batch.take(idx)``. Centres stay sorted and each centre's pairs
    keep the order of the search that found them, so sums over pairs do not depend on
    which rows were searched again when."""
    sites, atoms = batch.members(idx)
    redo = torch.zeros(len(batch), dtype=torch.bool, device=batch.device)
    redo[idx] = True
    old = ~redo[batch.site_struct[pairs.centre]]
    centre = torch.cat([pairs.centre[old], sites[found.centre]])
    order = torch.sort(centre, stable=True).indices
    atom = torch.cat([pairs.atom[old], atoms[found.atom]])[order]
    shift = torch.cat([pairs.shift[old], found.shift])[order]
    searched = pairs.searched.clone()
    searched[idx] = found.searched
    return Pairs(centre[order], atom, shift, searched)


def site_pair_vectors(batch: Batch, R: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """(P, 3) Cartesian vectors of site-centred pairs, differentiable in R.

    Only the atoms that occur in ``pairs`` are placed (not every atom of the batch).
    """
    lattice = lattice_matrix(cell_parameters(batch, R))
    x = site_coordinates(batch, R)  # (S, 3)

    def place(atom: torch.Tensor) -> torch.Tensor:
        xa = x.index_select(0, batch.atom_site.index_select(0, atom)).unsqueeze(-1)
        return (torch.bmm(batch.atom_M.index_select(0, atom), xa).squeeze(-1)
                + batch.atom_c.index_select(0, atom))

    delta = (place(pairs.atom) - place(batch.site_atom).index_select(0, pairs.centre)
             + pairs.shift)
    pair_lattice = lattice.index_select(0, batch.site_struct.index_select(0, pairs.centre))
    return torch.bmm(delta.unsqueeze(1), pair_lattice).squeeze(1)


def rows_of_batch(batch: Batch, R: torch.Tensor) -> list[Row]:
    """The batch's rows as :class:`Row` objects for free variables R (for tests, export)."""
    cell, xyz = rows_from_R(batch, R)
    return [Row(int(s), cell[b], batch.wps[b].copy(), xyz[b], species=batch.species[b].copy())
            for b, s in enumerate(batch.spg)]
