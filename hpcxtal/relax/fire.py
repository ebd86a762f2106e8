"""Batched FIRE with cell degrees of freedom (a Fréchet cell filter) over many structures.

Every structure in flight is one slice of a :class:`FireState`: per-atom tensors joined
end to end plus per-structure tensors. Each step makes one model call for the whole
batch, then applies FIRE (Bitzek et al. 2006, with ASE's parameter semantics) to every
structure at once with its own time step, mixing and step cap.

The cell enters as three extra "atoms" the way ASE's ``FrechetCellFilter`` does it: the
degrees of freedom are the atom positions in the undeformed cell and ``N log F``, with F
the deformation gradient from the starting cell; the cell gradient goes through the
Fréchet derivative of the matrix exponential. Given the same model, a structure follows
the same path as ASE's FIRE on ``FrechetCellFilter(atoms)``.

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
from dataclasses import dataclass, fields
from typing import Iterator, Sequence

import numpy as np
import torch

from hpcxtal.relax.models import BatchResult, EnergyModel
from hpcxtal.relax.symmetry import SymmetryOps, identity_ops, symmetrize_positions, symmetry_ops

log = logging.getLogger(__name__)

CONVERGED = "converged"
NOT_CONVERGED = "not_converged"
FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class FireParams:
    """FIRE and convergence settings (ASE's FIRE defaults; lengths in Å, forces in eV/Å).

    A structure of ``n`` atoms may take ``max_steps + steps_per_atom * n`` steps. A batch
    holds at most ``batch_atom_budget`` atoms and ``batch_edge_budget`` neighbour pairs
    (a single larger structure runs alone); ``batch_edge_budget`` None means the default
    for the model's device (:func:`default_edge_budget`). ``symmetrize`` keeps each
    structure's space group (found with tolerance ``symprec_A``).
    """

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
    overlap_A: float = 0.5
    min_volume_per_atom_A3: float = 1.0
    max_volume_per_atom_A3: float = 500.0
    batch_atom_budget: int = 2000
    batch_edge_budget: int | None = None
    symmetrize: bool = False
    symprec_A: float = 1e-3

    def __post_init__(self) -> None:
        if self.fmax_eV_per_A <= 0:
            raise ValueError(f"fmax_eV_per_A must be positive, got {self.fmax_eV_per_A}")
        if self.max_steps < 0 or self.steps_per_atom < 0:
            raise ValueError("max_steps and steps_per_atom must not be negative")
        if self.batch_atom_budget < 1 or (self.batch_edge_budget is not None
                                           and self.batch_edge_budget < 1):
            raise ValueError("batch_atom_budget and batch_edge_budget must be at least 1, got "
                             f"{self.batch_atom_budget} and {self.batch_edge_budget}")
        if self.symprec_A <= 0:
            raise ValueError(f"symprec_A must be positive, got {self.symprec_A}")

    def edge_budget(self, device: torch.device) -> int:
        """Neighbour pairs a batch may hold on ``device``."""
        if self.batch_edge_budget is None:
            return default_edge_budget(device)
        return self.batch_edge_budget

    def step_cap(self, natoms: int) -> int:
        """Most FIRE steps a structure of ``natoms`` atoms may take."""
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
    energy (eV, NaN if failed), status string, FIRE steps taken, final max force row."""

    atoms: object
    energy: float
    status: str
    steps: int
    fmax: float


#: Fields of :class:`FireState` with one entry per atom, and with one per structure.
ATOM_FIELDS = ("x", "v", "numbers")
SYSTEM_FIELDS = ("index", "natoms", "ref_cell", "xc", "vc", "dt", "alpha", "n_pos", "steps", "cap")


@dataclass
class FireState:
    """Structures in flight. ``x``: atom positions in the undeformed cell (Å);
    ``xc``: ``natoms * log F`` (the cell degrees of freedom); ``v``/``vc`` their
    velocities; ``index``: position of each structure in the caller's list."""

    x: torch.Tensor  # (n, 3)
    v: torch.Tensor  # (n, 3)
    numbers: torch.Tensor  # (n,)
    index: torch.Tensor  # (N,)
    natoms: torch.Tensor  # (N,)
    ref_cell: torch.Tensor  # (N, 3, 3)
    xc: torch.Tensor  # (N, 3, 3)
    vc: torch.Tensor  # (N, 3, 3)
    dt: torch.Tensor  # (N,)
    alpha: torch.Tensor  # (N,)
    n_pos: torch.Tensor  # (N,)
    steps: torch.Tensor  # (N,)
    cap: torch.Tensor  # (N,)

    def __post_init__(self) -> None:
        assert {f.name for f in fields(self)} == set(ATOM_FIELDS + SYSTEM_FIELDS)

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

    def select(self, keep: torch.Tensor) -> "FireState":
        """The structures where ``keep`` (N,) is true."""
        atom_keep = keep[self.batch]
        data = {k: getattr(self, k)[atom_keep] for k in ATOM_FIELDS}
        data.update({k: getattr(self, k)[keep] for k in SYSTEM_FIELDS})
        return FireState(**data)

    @staticmethod
    def concat(states: Sequence["FireState"]) -> "FireState":
        return FireState(**{f: torch.cat([getattr(s, f) for s in states])
                            for f in ATOM_FIELDS + SYSTEM_FIELDS})


def init_state(images: Sequence, indices: Sequence[int], params: FireParams,
               dtype: torch.dtype = torch.float64) -> FireState:
    """A FIRE state for ASE Atoms ``images`` (identified by ``indices``), at rest."""
    natoms = torch.tensor([len(a) for a in images], dtype=torch.long)
    n_struct = len(images)
    return FireState(
        x=torch.tensor(np.concatenate([a.positions for a in images]), dtype=dtype),
        v=torch.zeros((int(natoms.sum()), 3), dtype=dtype),
        numbers=torch.tensor(np.concatenate([a.numbers for a in images]), dtype=torch.long),
        index=torch.as_tensor(list(indices), dtype=torch.long),
        natoms=natoms,
        ref_cell=torch.tensor(np.array([np.asarray(a.cell) for a in images]), dtype=dtype),
        xc=torch.zeros((n_struct, 3, 3), dtype=dtype),
        vc=torch.zeros((n_struct, 3, 3), dtype=dtype),
        dt=torch.full((n_struct,), params.dt_start, dtype=dtype),
        alpha=torch.full((n_struct,), params.alpha_start, dtype=dtype),
        n_pos=torch.zeros(n_struct, dtype=torch.long),
        steps=torch.zeros(n_struct, dtype=torch.long),
        cap=torch.tensor([params.step_cap(len(a)) for a in images], dtype=torch.long),
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


def filter_gradients(state: FireState, result: BatchResult) -> tuple[torch.Tensor, torch.Tensor]:
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


def _per_structure(values: torch.Tensor, state: FireState) -> torch.Tensor:
    out = torch.zeros(len(state), dtype=values.dtype, device=values.device)
    return out.index_add_(0, state.batch, values)


def max_force(state: FireState, atom_force: torch.Tensor, cell_force: torch.Tensor) -> torch.Tensor:
    """(N,) largest force row per structure, cell rows included (ASE's criterion)."""
    rows = atom_force.norm(dim=1)
    out = torch.zeros(len(state), dtype=rows.dtype, device=rows.device)
    out = out.scatter_reduce(0, state.batch, rows, "amax", include_self=True)
    return torch.maximum(out, cell_force.norm(dim=2).amax(dim=1))


def fire_step(state: FireState, atom_force: torch.Tensor, cell_force: torch.Tensor,
              params: FireParams) -> None:
    """One FIRE step of every structure in ``state`` (in place), with ASE's semantics:
    the first step only starts the velocities."""
    b = state.batch
    started = state.steps > 0
    vf = _per_structure((atom_force * state.v).sum(1), state) + (cell_force * state.vc).sum((1, 2))
    f2 = _per_structure((atom_force ** 2).sum(1), state) + (cell_force ** 2).sum((1, 2))
    v2 = _per_structure((state.v ** 2).sum(1), state) + (state.vc ** 2).sum((1, 2))
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
    norm = torch.sqrt(_per_structure((dx ** 2).sum(1), state) + (dxc ** 2).sum((1, 2)))
    shrink = torch.where(norm > params.max_move_A, params.max_move_A / norm, torch.ones_like(norm))
    state.x = state.x + shrink[b, None] * dx
    state.xc = state.xc + shrink[:, None, None] * dxc
    state.steps = state.steps + 1


def _check_input(atoms) -> str | None:
    """Why ``atoms`` cannot be relaxed, or None."""
    if len(atoms) == 0:
        return "no atoms"
    if not np.isfinite(atoms.positions).all() or not np.isfinite(np.asarray(atoms.cell)).all():
        return "non-finite positions or cell"
    if abs(atoms.cell.volume) < 1e-6:
        return "degenerate cell (zero volume)"
    return None


def _problems(state: FireState, result: BatchResult, params: FireParams) -> list[str | None]:
    """Per structure: why this evaluation is unusable, or None."""
    _, cells = state.geometry()
    vol = (torch.linalg.det(cells).abs() / state.natoms).tolist()
    force_ok = _per_structure((~torch.isfinite(result.forces)).any(1).double(), state) == 0
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


def _evaluate(model: EnergyModel, state: FireState,
              params: FireParams) -> tuple[BatchResult | None, list[str | None]]:
    """One model call for ``state``; per structure None or why it failed. If the
    batched call raises, structures are evaluated alone to find the culprits."""
    positions, cells = state.geometry()
    try:
        result = model(positions, state.numbers, cells, state.batch)
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
    result = result.to(state.x.dtype)
    return result, _problems(state, result, params)


def _atoms_of(state: FireState, i: int, positions: torch.Tensor, cells: torch.Tensor):
    from ase import Atoms

    lo = int(state.natoms[:i].sum())
    hi = lo + int(state.natoms[i])
    return Atoms(numbers=state.numbers[lo:hi].numpy(), positions=positions[lo:hi].numpy(),
                 cell=cells[i].numpy(), pbc=True)


def _edge_count(atoms, cutoff: float) -> int:
    """Neighbour pairs of ``atoms`` within ``cutoff`` Å (periodic images included)."""
    from ase.neighborlist import neighbor_list

    return len(neighbor_list("i", atoms, cutoff, self_interaction=False))


def _symmetry(images: Sequence, indices: Sequence[int], params: FireParams) -> dict[int, SymmetryOps]:
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


def _symmetrized(state: FireState, result: BatchResult,
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
               params: FireParams = FireParams()) -> Iterator[tuple[int, RelaxResult]]:
    """Relax ASE Atoms ``images`` (positions and cell) with batched FIRE, yielding
    ``(index, result)`` as each structure finishes.

    Structures enter the batch in order while their atoms and neighbour pairs fit
    ``params.batch_atom_budget`` and the edge budget (``params.edge_budget``; one at a
    time if a single structure exceeds them) and leave it when they finish.
    """
    dtype = torch.float64
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
    state: FireState | None = None
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
            new = init_state([images[i] for i in admit], admit, params, dtype)
            state = new if state is None else FireState.concat([state, new])
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
        fmax = max_force(state, atom_force, cell_force)
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
            fire_step(state, atom_force, cell_force, params)
        else:
            state = None


def relax(images: Sequence, model: EnergyModel,
          params: FireParams = FireParams()) -> list[RelaxResult]:
    """Relax ASE Atoms ``images`` with batched FIRE; results in input order."""
    results: list[RelaxResult | None] = [None] * len(images)
    for i, result in iter_relax(images, model, params):
        results[i] = result
    return results  # type: ignore[return-value]
