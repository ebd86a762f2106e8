"""The state every batched optimiser moves, and the Fréchet cell filter it moves in.

Structures in flight are one :class:`CellState`: per-atom tensors joined end to end
plus per-structure tensors; an optimiser subclasses it with its own fields, declared
per atom or per structure so that selecting and joining work for every field.

The cell enters as three extra "atoms" the way ASE's ``FrechetCellFilter`` does it: the
degrees of freedom are the atom positions in the undeformed cell and ``N log F``, with F
the deformation gradient from the starting cell; the cell gradient goes through the
Fréchet derivative of the matrix exponential. Given the same model and optimiser, a
structure follows the same path as in ASE on ``FrechetCellFilter(atoms)``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Sequence, TypeVar

import numpy as np
import torch

from hpcxtal.relax.models import BatchResult

S = TypeVar("S", bound="CellState")


@dataclass
class CellState:
    """Structures in flight. ``x``: atom positions in the undeformed cell (Å);
    ``xc``: ``natoms * log F`` (the cell degrees of freedom); ``index``: position of
    each structure in the caller's list; ``steps``/``cap``: steps taken and allowed."""

    #: Fields with one entry per atom, and with one per structure (subclasses extend).
    atom_fields: ClassVar[tuple[str, ...]] = ("x", "numbers")
    system_fields: ClassVar[tuple[str, ...]] = ("index", "natoms", "ref_cell", "xc", "steps", "cap")

    x: torch.Tensor  # (n, 3)
    numbers: torch.Tensor  # (n,)
    index: torch.Tensor  # (N,)
    natoms: torch.Tensor  # (N,)
    ref_cell: torch.Tensor  # (N, 3, 3)
    xc: torch.Tensor  # (N, 3, 3)
    steps: torch.Tensor  # (N,)
    cap: torch.Tensor  # (N,)

    def __post_init__(self) -> None:
        assert {f.name for f in fields(self)} == set(self.atom_fields + self.system_fields)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def batch(self) -> torch.Tensor:
        """(n,) structure of each atom, 0..N-1."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.x.device), self.natoms)

    def deformation(self) -> torch.Tensor:
        """(N, 3, 3) deformation gradients F = exp(xc / natoms)."""
        return torch.linalg.matrix_exp(self.xc / self.natoms[:, None, None].to(self.xc.dtype))

    def geometry(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cartesian positions (n, 3) and cells (N, 3, 3) of the current state."""
        f = self.deformation()
        return torch.einsum("ij,ikj->ik", self.x, f[self.batch]), self.ref_cell @ f.transpose(1, 2)

    def select(self: S, keep: torch.Tensor) -> S:
        """The structures where ``keep`` (N,) is true."""
        atom_keep = keep[self.batch]
        data = {k: getattr(self, k)[atom_keep] for k in self.atom_fields}
        data.update({k: getattr(self, k)[keep] for k in self.system_fields})
        return type(self)(**data)

    @classmethod
    def concat(cls: type[S], states: Sequence[S]) -> S:
        """One state holding ``states`` one after the other."""
        return cls(**{f: torch.cat([getattr(s, f) for s in states])
                      for f in cls.atom_fields + cls.system_fields})


def cell_fields(images: Sequence, indices: Sequence[int], caps: Sequence[int],
                dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The :class:`CellState` fields of ASE Atoms ``images`` at their starting geometry."""
    natoms = torch.tensor([len(a) for a in images], dtype=torch.long)
    return dict(
        x=torch.tensor(np.concatenate([a.positions for a in images]), dtype=dtype),
        numbers=torch.tensor(np.concatenate([a.numbers for a in images]), dtype=torch.long),
        index=torch.as_tensor(list(indices), dtype=torch.long),
        natoms=natoms,
        ref_cell=torch.tensor(np.array([np.asarray(a.cell) for a in images]), dtype=dtype),
        xc=torch.zeros((len(images), 3, 3), dtype=dtype),
        steps=torch.zeros(len(images), dtype=torch.long),
        cap=torch.as_tensor(list(caps), dtype=torch.long),
    )


def _expm_frechet_adjoint(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """M with <M, E> = <d/dt exp(x + t E), g> for every E: the adjoint Fréchet
    derivative of the matrix exponential, batched; equals L(x^T, g), the upper-right
    block of exp([[x^T, g], [0, x^T]])."""
    n = len(x)
    block = torch.zeros((n, 6, 6), dtype=x.dtype, device=x.device)
    xt = x.transpose(1, 2)
    block[:, :3, :3] = xt
    block[:, 3:, 3:] = xt
    block[:, :3, 3:] = g
    return torch.linalg.matrix_exp(block)[:, :3, 3:]


def filter_gradients(state: CellState, result: BatchResult) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised forces on the atom (n, 3) and cell (N, 3, 3) degrees of freedom."""
    f = state.deformation()
    n = state.natoms[:, None, None].to(f.dtype)
    _, cells = state.geometry()
    volume = torch.linalg.det(cells).abs()
    virial = -volume[:, None, None] * result.stress
    atom_force = torch.einsum("ij,ijk->ik", result.forces, f[state.batch])
    cell_grad = virial @ torch.linalg.inv(f.transpose(1, 2))
    cell_force = _expm_frechet_adjoint(state.xc / n, cell_grad) / n
    return atom_force, cell_force


def per_structure(values: torch.Tensor, state: CellState) -> torch.Tensor:
    """(N,) sums of per-atom ``values`` (n,) over each structure."""
    out = torch.zeros(len(state), dtype=values.dtype, device=values.device)
    return out.index_add_(0, state.batch, values)


def dot(state: CellState, a: torch.Tensor, ac: torch.Tensor, b: torch.Tensor,
        bc: torch.Tensor) -> torch.Tensor:
    """(N,) per-structure dot products of (atom rows ``a``, cell rows ``ac``) with
    (``b``, ``bc``)."""
    return per_structure((a * b).sum(1), state) + (ac * bc).sum((1, 2))


def longest_row(state: CellState, atom_rows: torch.Tensor, cell_rows: torch.Tensor) -> torch.Tensor:
    """(N,) largest row norm per structure, cell rows included (ASE's force criterion
    and its step-length measure)."""
    rows = atom_rows.norm(dim=1)
    out = torch.zeros(len(state), dtype=rows.dtype, device=rows.device)
    out = out.scatter_reduce(0, state.batch, rows, "amax", include_self=True)
    return torch.maximum(out, cell_rows.norm(dim=2).amax(dim=1))
