"""Symmetry preservation for batched relaxation.

A structure's space-group operations (spglib) are turned into Cartesian rotations and
atom permutations once, at the start. Each FIRE step then averages the forces and the
stress over the group, so the generalised forces, and with them every step, keep the
starting symmetry; the positions are projected onto the symmetric configuration once at
the start so that small numerical asymmetries do not survive. The cell is used as given
(structures decoded from tabular rows have exactly symmetric lattices).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import spglib
import torch


@dataclass(frozen=True)
class SymmetryOps:
    """The space-group operations of one structure: Cartesian rotations (G, 3, 3) acting on
    column vectors, the fractional rotations and translations spglib gave, and
    ``perm[g, i]``: the atom that operation ``g`` takes atom ``i`` to."""

    rotations: torch.Tensor
    frac_rotations: np.ndarray
    translations: np.ndarray
    perm: torch.Tensor
    spacegroup: int

    def symmetrize_forces(self, forces: torch.Tensor) -> torch.Tensor:
        """(n, 3) forces averaged over the group: f'[perm_g(i)] = R_g f[i], mean over g."""
        rotated = torch.einsum("gab,ib->gia", self.rotations.to(forces.dtype), forces)
        out = torch.zeros_like(forces)
        out.index_add_(0, self.perm.reshape(-1), rotated.reshape(-1, 3))
        return out / len(self.rotations)

    def symmetrize_stress(self, stress: torch.Tensor) -> torch.Tensor:
        """(3, 3) stress averaged over the group: mean of R sigma R^T."""
        r = self.rotations.to(stress.dtype)
        return (r @ stress @ r.transpose(1, 2)).mean(0)


def symmetry_ops(atoms, symprec: float = 1e-3) -> SymmetryOps:
    """The operations of ``atoms`` (ASE Atoms) found by spglib within ``symprec`` Å.

    Raises ``ValueError`` if spglib finds no symmetry or an operation does not map the
    atoms onto each other (``symprec`` too loose for this structure).
    """
    cell = np.asarray(atoms.cell, dtype=float)
    frac = atoms.get_scaled_positions(wrap=True)
    found = spglib.get_symmetry_dataset((cell, frac, atoms.numbers), symprec=symprec)
    if found is None:
        raise ValueError(f"spglib finds no symmetry (symprec {symprec})")
    n = len(atoms)
    perm = np.empty((len(found.rotations), n), dtype=np.int64)
    for g, (rot, trans) in enumerate(zip(found.rotations, found.translations)):
        image = frac @ rot.T + trans
        delta = image[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)
        dist = np.linalg.norm(delta @ cell, axis=2)
        dist[atoms.numbers[:, None] != atoms.numbers[None, :]] = np.inf
        target = dist.argmin(axis=1)
        if not (dist[np.arange(n), target] <= 2 * symprec).all() or len(set(target)) != n:
            raise ValueError(f"operation {g} does not map the atoms onto each other "
                             f"(symprec {symprec})")
        perm[g] = target
    # r = L^T x with the lattice vectors as rows of L, so R_cart = L^T R inv(L^T)
    cart = cell.T @ found.rotations @ np.linalg.inv(cell.T)
    return SymmetryOps(torch.as_tensor(cart), np.asarray(found.rotations),
                       np.asarray(found.translations), torch.as_tensor(perm), int(found.number))


def identity_ops(natoms: int) -> SymmetryOps:
    """The trivial group (P1) of a structure of ``natoms`` atoms."""
    return SymmetryOps(torch.eye(3, dtype=torch.float64)[None], np.eye(3, dtype=int)[None],
                       np.zeros((1, 3)), torch.arange(natoms)[None], 1)


def symmetrize_positions(atoms, ops: SymmetryOps) -> np.ndarray:
    """Cartesian positions of ``atoms`` projected onto the group: each atom moves by the
    mean offset between it and the images the operations map onto it."""
    cell = np.asarray(atoms.cell, dtype=float)
    frac = atoms.get_scaled_positions(wrap=False)
    shift = np.zeros_like(frac)
    for rot, trans, perm in zip(ops.frac_rotations, ops.translations, ops.perm.numpy()):
        delta = frac @ rot.T + trans - frac[perm]
        np.add.at(shift, perm, delta - np.round(delta))
    return (frac + shift / len(ops.translations)) @ cell
