"""Batched FIRE (Bitzek et al. 2006, with ASE's parameter semantics) on positions and cell.

Every structure has its own time step, mixing and step cap; with the same model a
structure follows ASE's ``FIRE(FrechetCellFilter(atoms))`` step for step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from hpcxtal.relax.cellfilter import CellState, cell_fields, dot, per_structure

if TYPE_CHECKING:
    from hpcxtal.relax.engine import RelaxParams


@dataclass
class FireState(CellState):
    """A :class:`CellState` with FIRE's velocities (``v`` atoms, ``vc`` cell), time
    steps, mixing and counts of downhill steps."""

    atom_fields = CellState.atom_fields + ("v",)
    system_fields = CellState.system_fields + ("vc", "dt", "alpha", "n_pos")

    v: torch.Tensor  # (n, 3)
    vc: torch.Tensor  # (N, 3, 3)
    dt: torch.Tensor  # (N,)
    alpha: torch.Tensor  # (N,)
    n_pos: torch.Tensor  # (N,)


def fire_init(images: Sequence, indices: Sequence[int], params: "RelaxParams",
              dtype: torch.dtype = torch.float64) -> FireState:
    """A FIRE state for ASE Atoms ``images`` (identified by ``indices``), at rest."""
    base = cell_fields(images, indices, [params.step_cap(len(a)) for a in images], dtype)
    n = len(images)
    return FireState(**base, v=torch.zeros_like(base["x"]), vc=torch.zeros_like(base["xc"]),
                     dt=torch.full((n,), params.dt_start, dtype=dtype),
                     alpha=torch.full((n,), params.alpha_start, dtype=dtype),
                     n_pos=torch.zeros(n, dtype=torch.long))


def fire_step(state: FireState, atom_force: torch.Tensor, cell_force: torch.Tensor,
              params: "RelaxParams") -> None:
    """One FIRE step of every structure in ``state`` (in place), with ASE's semantics:
    the first step only starts the velocities."""
    b = state.batch
    started = state.steps > 0
    vf = dot(state, atom_force, cell_force, state.v, state.vc)
    f2 = dot(state, atom_force, cell_force, atom_force, cell_force)
    v2 = dot(state, state.v, state.vc, state.v, state.vc)
    downhill = started & (vf > 0)
    uphill = started & ~(vf > 0)
    mix = torch.where(downhill, state.alpha, torch.zeros_like(state.alpha))
    scale = torch.where(downhill, mix * torch.sqrt(v2 / f2.clamp_min(1e-300)),
                        torch.zeros_like(mix))
    keep = torch.where(uphill, torch.zeros_like(mix), 1.0 - mix)
    state.v = keep[b, None] * state.v + scale[b, None] * atom_force
    state.vc = keep[:, None, None] * state.vc + scale[:, None, None] * cell_force
    grow = downhill & (state.n_pos > params.n_min)
    state.dt = torch.where(grow, torch.clamp(state.dt * params.f_inc, max=params.dt_max), state.dt)
    state.alpha = torch.where(grow, state.alpha * params.f_alpha, state.alpha)
    state.n_pos = torch.where(downhill, state.n_pos + 1, state.n_pos)
    state.dt = torch.where(uphill, state.dt * params.f_dec, state.dt)
    state.alpha = torch.where(uphill, torch.full_like(state.alpha, params.alpha_start), state.alpha)
    state.n_pos = torch.where(uphill, torch.zeros_like(state.n_pos), state.n_pos)

    state.v = state.v + state.dt[b, None] * atom_force
    state.vc = state.vc + state.dt[:, None, None] * cell_force
    dx, dxc = state.dt[b, None] * state.v, state.dt[:, None, None] * state.vc
    norm = torch.sqrt(per_structure((dx ** 2).sum(1), state) + (dxc ** 2).sum((1, 2)))
    shrink = torch.where(norm > params.max_move_A, params.max_move_A / norm, torch.ones_like(norm))
    state.x = state.x + shrink[b, None] * dx
    state.xc = state.xc + shrink[:, None, None] * dxc
    state.steps = state.steps + 1
