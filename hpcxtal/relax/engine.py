"""Batched relaxation (positions and cell) of many structures with one model call per step.

Every structure in flight is one slice of an optimiser state (a
:class:`~hpcxtal.relax.cellfilter.CellState`: per-atom tensors joined end to end plus
per-structure tensors, in the Fréchet cell filter's degrees of freedom). Each step makes
one model call for the whole batch, then moves every structure at once with the chosen
optimiser (``optimizer``): batched L-BFGS (:mod:`hpcxtal.relax.lbfgs`) or FIRE
(:mod:`hpcxtal.relax.fire`), each with ASE's semantics and per-structure state, so a
structure follows the same path as ASE's optimiser on ``FrechetCellFilter(atoms)``.

Structures finish one by one: ``converged`` (largest force row, cell rows included,
below ``fmax``), ``not_converged`` (step cap reached; never reported as converged) or
``failed: reason`` (non-finite input, energy, forces or stress, overlapping atoms, a
collapsed or exploded cell, or a model error). A failing structure leaves the batch
before its neighbours are updated, so it cannot change their results. Finished
structures make room for waiting ones under an atom and an edge budget (in-flight
batching; edges are neighbour pairs within the model's cutoff, counted at the start).

With ``symmetrize`` on, each structure keeps the space group spglib finds at the start:
forces and stress are averaged over the group every step (see
:mod:`hpcxtal.relax.symmetry`).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from hpcxtal.relax.cellfilter import CellState, filter_gradients, longest_row, per_structure
from hpcxtal.relax.config import check_relax_settings
from hpcxtal.relax.fire import fire_init, fire_step
from hpcxtal.relax.lbfgs import lbfgs_init, lbfgs_step
from hpcxtal.relax.models import BatchResult, EnergyModel
from hpcxtal.relax.symmetry import SymmetryOps, identity_ops, symmetrize_positions, symmetry_ops

log = logging.getLogger(__name__)

CONVERGED = "converged"
NOT_CONVERGED = "not_converged"
FAILED = "failed"

#: Optimisers by name: (state for new structures, one step of every structure in place).
OPTIMIZERS: dict[str, tuple[Callable[..., CellState], Callable[..., None]]] = {
    "lbfgs": (lbfgs_init, lbfgs_step),
    "fire": (fire_init, fire_step),
}


@dataclass(frozen=True, kw_only=True)
class RelaxParams:
    """Optimiser and convergence settings (ASE's defaults; lengths in Å, forces in eV/Å).

    ``optimizer`` names an entry of :data:`OPTIMIZERS`: ``lbfgs`` (history of
    ``lbfgs_memory`` steps, initial Hessian ``lbfgs_alpha_eV_per_A2``) or ``fire``
    (``dt_*``, ``n_min``, ``f_*``, ``alpha_start``); both move no row of a structure
    more than ``max_move_A`` per step. A structure of ``n`` atoms may take
    ``max_steps + steps_per_atom * n`` steps. A batch
    holds at most ``batch_atom_budget`` atoms and ``batch_edge_budget`` neighbour pairs
    (a single larger structure runs alone); ``batch_edge_budget`` None means the default
    for the model's device (:func:`default_edge_budget`). ``symmetrize`` keeps each
    structure's space group (found with tolerance ``symprec_A``).
    """

    optimizer: str = "lbfgs"
    fmax_eV_per_A: float = 0.05
    max_steps: int = 300
    steps_per_atom: float = 2.0
    dt_start: float = 0.1
    dt_max: float = 1.0
    max_move_A: float = 0.2
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha_start: float = 0.1
    f_alpha: float = 0.99
    lbfgs_memory: int = 100
    lbfgs_alpha_eV_per_A2: float = 70.0
    overlap_A: float = 0.5
    min_volume_per_atom_A3: float = 1.0
    max_volume_per_atom_A3: float = 500.0
    batch_atom_budget: int = 2000
    batch_edge_budget: int | None = None
    symmetrize: bool = False
    symprec_A: float = 1e-3

    def __post_init__(self) -> None:
        check_relax_settings(self)
        if self.lbfgs_memory < 1 or self.lbfgs_alpha_eV_per_A2 <= 0:
            raise ValueError("lbfgs_memory must be at least 1 and lbfgs_alpha_eV_per_A2 "
                             "positive")

    def edge_budget(self, device: torch.device) -> int:
        """Neighbour pairs a batch may hold on ``device``."""
        if self.batch_edge_budget is None:
            return default_edge_budget(device)
        return self.batch_edge_budget

    def step_cap(self, natoms: int) -> int:
        """Most steps a structure of ``natoms`` atoms may take."""
        return int(self.max_steps + self.steps_per_atom * natoms)


#: Default edge budgets. On a CPU a MACE call costs least per atom while its per-edge
#: tensors stay in cache (about 3-9k edges here, BENCHMARKS.md "Batch size on a CPU");
#: bigger batches are memory-bound and slower per atom. A GPU wants large batches.
CPU_EDGE_BUDGET = 6_000
GPU_EDGE_BUDGET = 150_000


def default_edge_budget(device: torch.device) -> int:
    """Neighbour pairs per batch when the config names none: small on a CPU, large on
    a GPU."""
    return CPU_EDGE_BUDGET if torch.device(device).type == "cpu" else GPU_EDGE_BUDGET


@dataclass
class RelaxResult:
    """One structure's outcome: relaxed atoms (the input structure if it failed), total
    energy (eV, NaN if failed), status string, optimiser steps taken, final max force row."""

    atoms: object
    energy: float
    status: str
    steps: int
    fmax: float


def _check_input(atoms) -> str | None:
    """Why ``atoms`` cannot be relaxed, or None."""
    if len(atoms) == 0:
        return "no atoms"
    if not np.isfinite(atoms.positions).all() or not np.isfinite(np.asarray(atoms.cell)).all():
        return "non-finite positions or cell"
    if abs(atoms.cell.volume) < 1e-6:
        return "degenerate cell (zero volume)"
    return None


def _problems(state: CellState, result: BatchResult, params: RelaxParams) -> list[str | None]:
    """Per structure: why this evaluation is unusable, or None."""
    _, cells = state.geometry()
    vol = (torch.linalg.det(cells).abs() / state.natoms).tolist()
    force_ok = per_structure((~torch.isfinite(result.forces)).any(1).double(), state) == 0
    out: list[str | None] = []
    for i in range(len(state)):
        if not torch.isfinite(result.energy[i]):
            out.append("energy is not finite")
        elif not bool(force_ok[i]) or not torch.isfinite(result.stress[i]).all():
            out.append("forces or stress not finite")
        elif result.min_distance[i] < params.overlap_A:
            out.append(f"overlapping atoms ({float(result.min_distance[i]):.3f} Å apart)")
        elif vol[i] < params.min_volume_per_atom_A3:
            out.append(f"cell collapsed ({vol[i]:.3g} Å³/atom)")
        elif vol[i] > params.max_volume_per_atom_A3:
            out.append(f"cell exploded ({vol[i]:.3g} Å³/atom)")
        else:
            out.append(None)
    return out


def _evaluate(model: EnergyModel, state: CellState,
              params: RelaxParams) -> tuple[BatchResult | None, list[str | None]]:
    """One model call for ``state``; per structure None or why it failed. If the
    batched call raises, structures are evaluated alone to find the culprits."""
    positions, cells = state.geometry()
    try:
        keys = {"keys": state.index.tolist()} if getattr(model, "takes_keys", False) else {}
        result = model(positions, state.numbers, cells, state.batch, **keys)
    except Exception as err:  # noqa: BLE001  (any model error fails a structure, not the run)
        if len(state) == 1:
            return None, [f"model error: {type(err).__name__}: {err}"]
        log.debug("batched model call failed (%s); evaluating structures one by one", err)
        reasons = []
        for i in range(len(state)):
            one = torch.zeros(len(state), dtype=torch.bool)
            one[i] = True
            reasons.append(_evaluate(model, state.select(one), params)[1][0])
        if all(r is None for r in reasons):
            raise RuntimeError(f"the model fails on a batch of {int(state.natoms.sum())} atoms "
                               f"but not on its structures alone ({err}); lower "
                               "batch_atom_budget") from err
        return None, reasons
    result = result.to(state.x.dtype, state.x.device)
    return result, _problems(state, result, params)


def _atoms_of(state: CellState, i: int, positions: torch.Tensor, cells: torch.Tensor):
    from ase import Atoms

    lo = int(state.natoms[:i].sum())
    hi = lo + int(state.natoms[i])
    return Atoms(numbers=state.numbers[lo:hi].numpy(), positions=positions[lo:hi].numpy(),
                 cell=cells[i].numpy(), pbc=True)


def _edge_count(atoms, cutoff: float) -> int:
    """Neighbour pairs of ``atoms`` within ``cutoff`` Å (periodic images included)."""
    from ase.neighborlist import neighbor_list

    return len(neighbor_list("i", atoms, cutoff, self_interaction=False))


def _symmetry(images: Sequence, indices: Sequence[int], params: RelaxParams) -> dict[int, SymmetryOps]:
    """Space-group operations of ``images[k]`` for each ``k`` in ``indices``; a structure
    whose operations spglib cannot confirm keeps only the identity (logged)."""
    ops = {}
    for k in indices:
        try:
            ops[k] = symmetry_ops(images[k], params.symprec_A)
        except ValueError as err:
            log.warning("structure %d: %s; relaxed without symmetry", k, err)
            ops[k] = identity_ops(len(images[k]))
    return ops


def _symmetrized(state: CellState, result: BatchResult,
                 ops: dict[int, SymmetryOps]) -> BatchResult:
    """``result`` with each structure's forces and stress averaged over its group."""
    forces = result.forces.clone()
    stress = result.stress.clone()
    lo = 0
    for i, (k, n) in enumerate(zip(state.index.tolist(), state.natoms.tolist())):
        forces[lo:lo + n] = ops[k].symmetrize_forces(result.forces[lo:lo + n])
        stress[i] = ops[k].symmetrize_stress(result.stress[i])
        lo += n
    return BatchResult(result.energy, forces, stress, result.min_distance)


def iter_relax(images: Sequence, model: EnergyModel,
               params: RelaxParams = RelaxParams()) -> Iterator[tuple[int, RelaxResult]]:
    """Relax ASE Atoms ``images`` (positions and cell) with the batched optimiser
    ``params.optimizer``, yielding ``(index, result)`` as each structure finishes.

    Structures enter the batch in order while their atoms and neighbour pairs fit
    ``params.batch_atom_budget`` and the edge budget (``params.edge_budget``; one at a
    time if a single structure exceeds them) and leave it when they finish.
    """
    dtype = torch.float64
    init, step = OPTIMIZERS[params.optimizer]
    pending: deque[int] = deque()
    for i, atoms in enumerate(images):
        reason = _check_input(atoms)
        if reason is None:
            pending.append(i)
        else:
            yield i, RelaxResult(atoms.copy(), float("nan"), f"{FAILED}: {reason}", 0, float("nan"))
    edges = {i: _edge_count(images[i], model.cutoff) for i in pending}
    edge_budget = params.edge_budget(model.device)
    ops = _symmetry(images, pending, params) if params.symmetrize else {}
    if ops:
        images = list(images)
        for k, o in ops.items():
            images[k] = images[k].copy()
            images[k].positions = symmetrize_positions(images[k], o)
    state: CellState | None = None
    while pending or (state is not None and len(state)):
        in_flight = state.index.tolist() if state is not None else []
        atom_room = params.batch_atom_budget - sum(len(images[k]) for k in in_flight)
        edge_room = edge_budget - sum(edges[k] for k in in_flight)
        admit = []
        while pending and ((len(images[pending[0]]) <= atom_room and edges[pending[0]] <= edge_room)
                           or (not admit and not in_flight)):
            atom_room -= len(images[pending[0]])
            edge_room -= edges[pending[0]]
            admit.append(pending.popleft())
        if admit:
            new = init([images[i] for i in admit], admit, params, dtype)
            state = new if state is None else type(new).concat([state, new])
        assert state is not None
        while True:  # evaluate; drop failures and evaluate the rest again without them
            result, reasons = _evaluate(model, state, params)
            failed = torch.tensor([r is not None for r in reasons])
            if not failed.any():
                break
            for i in torch.nonzero(failed).flatten().tolist():
                k = int(state.index[i])
                yield k, RelaxResult(images[k].copy(), float("nan"), f"{FAILED}: {reasons[i]}",
                                     int(state.steps[i]), float("nan"))
            state = state.select(~failed)
            if len(state) == 0:
                break
        if len(state) == 0:
            state = None
            continue
        if ops:
            result = _symmetrized(state, result, ops)
        positions, cells = state.geometry()
        assert result is not None
        atom_force, cell_force = filter_gradients(state, result)
        fmax = longest_row(state, atom_force, cell_force)
        converged = fmax < params.fmax_eV_per_A
        capped = ~converged & (state.steps >= state.cap)
        done = converged | capped
        for i in torch.nonzero(done).flatten().tolist():
            status = CONVERGED if bool(converged[i]) else NOT_CONVERGED
            yield int(state.index[i]), RelaxResult(
                _atoms_of(state, i, positions, cells), float(result.energy[i]), status,
                int(state.steps[i]), float(fmax[i]))
        if done.any():
            keep = ~done
            atom_force, cell_force = atom_force[keep[state.batch]], cell_force[keep]
            state = state.select(keep)
        if len(state):
            step(state, atom_force, cell_force, params)
        else:
            state = None


def relax(images: Sequence, model: EnergyModel,
          params: RelaxParams = RelaxParams()) -> list[RelaxResult]:
    """Relax ASE Atoms ``images`` with the batched optimiser; results in input order."""
    results: list[RelaxResult | None] = [None] * len(images)
    for i, result in iter_relax(images, model, params):
        results[i] = result
    return results  # type: ignore[return-value]
