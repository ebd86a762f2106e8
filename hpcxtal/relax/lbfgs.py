"""Batched L-BFGS (ASE's ``LBFGS`` semantics) on positions and cell, one history per structure.

Each structure keeps its own last ``memory`` position and gradient differences (atom rows
and the three cell rows of the Fréchet filter) and takes the two-loop quasi-Newton step
from a constant initial inverse Hessian ``1 / alpha``, scaled down so that no row moves
more than ``max_move_A`` (ASE's ``determine_step``). With the same model a structure
follows ASE's ``LBFGS(FrechetCellFilter(atoms))`` step for step, except that a pair with
non-positive curvature (``y . s <= 0``) is kept out of the history (ASE would divide by
it), so the step is always downhill.

The histories are per-atom tensors (``n, memory, 3``) and per-structure ones
(``N, memory, 3, 3``) shifted one slot per step, so joining, splitting and dropping
structures need nothing special; a slot with ``rho = 0`` contributes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from hpcxtal.relax.cellfilter import CellState, cell_fields, dot, longest_row

if TYPE_CHECKING:
    from hpcxtal.relax.engine import RelaxParams


@dataclass
class LBFGSState(CellState):
    """A :class:`CellState` with each structure's L-BFGS history: steps ``s`` and
    gradient changes ``y`` (atom rows ``*_x``, cell rows ``*_c``; oldest first),
    ``rho = 1 / (y . s)`` (0: empty slot), and the previous point and gradient."""

    atom_fields = CellState.atom_fields + ("s_x", "y_x", "x_prev", "g_prev")
    system_fields = CellState.system_fields + ("s_c", "y_c", "rho", "xc_prev", "gc_prev")

    s_x: torch.Tensor  # (n, m, 3)
    y_x: torch.Tensor  # (n, m, 3)
    x_prev: torch.Tensor  # (n, 3)
    g_prev: torch.Tensor  # (n, 3)
    s_c: torch.Tensor  # (N, m, 3, 3)
    y_c: torch.Tensor  # (N, m, 3, 3)
    rho: torch.Tensor  # (N, m)
    xc_prev: torch.Tensor  # (N, 3, 3)
    gc_prev: torch.Tensor  # (N, 3, 3)


def lbfgs_init(images: Sequence, indices: Sequence[int], params: "RelaxParams",
               dtype: torch.dtype = torch.float64) -> LBFGSState:
    """An L-BFGS state for ASE Atoms ``images`` (identified by ``indices``), no history."""
    base = cell_fields(images, indices, [params.step_cap(len(a)) for a in images], dtype)
    n, big_n, m = len(base["x"]), len(images), params.lbfgs_memory
    return LBFGSState(**base,
                      s_x=torch.zeros((n, m, 3), dtype=dtype),
                      y_x=torch.zeros((n, m, 3), dtype=dtype),
                      x_prev=torch.zeros_like(base["x"]), g_prev=torch.zeros_like(base["x"]),
                      s_c=torch.zeros((big_n, m, 3, 3), dtype=dtype),
                      y_c=torch.zeros((big_n, m, 3, 3), dtype=dtype),
                      rho=torch.zeros((big_n, m), dtype=dtype),
                      xc_prev=torch.zeros_like(base["xc"]), gc_prev=torch.zeros_like(base["xc"]))


def _push(history: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``history`` (rows, m, ...) with its oldest slot dropped and ``new`` appended."""
    return torch.cat([history[:, 1:], new.unsqueeze(1)], dim=1)


def lbfgs_step(state: LBFGSState, atom_force: torch.Tensor, cell_force: torch.Tensor,
               params: "RelaxParams") -> None:
    """One L-BFGS step of every structure in ``state`` (in place): record the last
    step's curvature pair, then move along the two-loop direction, capped per structure."""
    b = state.batch
    started = state.steps > 0
    g, gc = -atom_force, -cell_force
    s, sc = state.x - state.x_prev, state.xc - state.xc_prev
    y, yc = g - state.g_prev, gc - state.gc_prev
    ys = dot(state, y, yc, s, sc)
    use = started & (ys > 0)
    rho = torch.where(use, 1.0 / torch.where(use, ys, torch.ones_like(ys)), torch.zeros_like(ys))
    state.s_x, state.y_x = _push(state.s_x, s), _push(state.y_x, y)
    state.s_c, state.y_c = _push(state.s_c, sc), _push(state.y_c, yc)
    state.rho = _push(state.rho, rho)

    # two-loop recursion over the slots that can be filled (the newest min(m, steps))
    m = state.rho.shape[1]
    filled = min(m, int(state.steps.max()))
    q, qc = g, gc
    a = {}
    for i in range(m - 1, m - 1 - filled, -1):
        a[i] = state.rho[:, i] * dot(state, state.s_x[:, i], state.s_c[:, i], q, qc)
        q = q - a[i][b, None] * state.y_x[:, i]
        qc = qc - a[i][:, None, None] * state.y_c[:, i]
    z, zc = q / params.lbfgs_alpha_eV_per_A2, qc / params.lbfgs_alpha_eV_per_A2
    for i in range(m - filled, m):
        coef = a[i] - state.rho[:, i] * dot(state, state.y_x[:, i], state.y_c[:, i], z, zc)
        z = z + coef[b, None] * state.s_x[:, i]
        zc = zc + coef[:, None, None] * state.s_c[:, i]

    longest = longest_row(state, z, zc)
    shrink = torch.where(longest >= params.max_move_A, params.max_move_A / longest,
                         torch.ones_like(longest))
    state.x_prev, state.xc_prev, state.g_prev, state.gc_prev = state.x, state.xc, g, gc
    state.x = state.x - shrink[b, None] * z
    state.xc = state.xc - shrink[:, None, None] * zc
    state.steps = state.steps + 1
