"""Representation-space refinement (Algorithm 1): minimise the refinement objective
(:mod:`hpcxtal.refine.objective`; by default every site's SO(3) spectrum against the
target environment) by batched gradient descent on the free variables R.

One batch is one tensor program: per-sample Adam (:mod:`hpcxtal.refine.optim`) with
gradient clipping and plateau step control, bounds on lattice and coordinates,
each row's neighbour list reused while it stays within a skin, converged samples
dropped from the working set, and validity checked on the way so samples that are
valid and flat stop early.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from hpcxtal.crystal.freevars import ANGLE, COORD, LENGTH
from hpcxtal.descriptor.batch import (
    Batch, Geometry, build_batch, positions, replace_pairs, rows_from_R, take_pairs,
)
from hpcxtal.descriptor.neighbors import Pairs, plane_reach
from hpcxtal.refine.config import RefineConfig
from hpcxtal.refine.objective import Objective, build_objective
from hpcxtal.refine.optim import adam_init, adam_step
from hpcxtal.refine.status import RefineStatus

log = logging.getLogger(__name__)



@dataclass
class RefineResult:
    """Per-row outcome of refining a table (input order)."""

    cell: np.ndarray  # (N, 6)
    xyz: np.ndarray  # (N, 8, 3)
    loss: np.ndarray  # (N,)
    valid: np.ndarray  # (N,) bool
    steps: np.ndarray  # (N,) int
    status: list[RefineStatus]
    reason: list[str]  # why a row failed ("" otherwise)


def plan_batches(n_atoms: np.ndarray, max_atoms: int) -> list[np.ndarray]:
    """Consecutive index runs whose atom counts add up to at most ``max_atoms`` (a
    row larger than the budget gets a batch of its own)."""
    batches, start, total = [], 0, 0
    for i, n in enumerate(n_atoms):
        if i > start and total + n > max_atoms:
            batches.append(np.arange(start, i))
            start, total = i, 0
        total += int(n)
    if len(n_atoms):
        batches.append(np.arange(start, len(n_atoms)))
    return batches


def _step_scale(batch: Batch, cfg: RefineConfig) -> torch.Tensor:
    """Per-variable step multipliers from the variable kinds (padding never moves)."""
    scale = torch.zeros_like(batch.R0)
    scale[batch.kind == LENGTH] = cfg.lr_length_A
    scale[batch.kind == ANGLE] = cfg.lr_angle_deg
    scale[batch.kind == COORD] = 1.0
    return scale


def _apply_bounds(R: torch.Tensor, kind: torch.Tensor, cfg: RefineConfig) -> torch.Tensor:
    """Lengths and angles clamped into their bounds, coordinates wrapped into [0, 1)."""
    lo_l, hi_l = cfg.length_bounds_A
    lo_a, hi_a = cfg.angle_bounds_deg
    R = torch.where(kind == LENGTH, R.clamp(lo_l, hi_l), R)
    R = torch.where(kind == ANGLE, R.clamp(lo_a, hi_a), R)
    return torch.where(kind == COORD, R - torch.floor(R), R)


def _outside_skin(batch: Batch, now: Geometry, built_frac: torch.Tensor,
                  built_lattice: torch.Tensor, cutoff: float, skin: float) -> torch.Tensor:
    """(B,) bool: rows where some pair may have crossed into the cutoff since the row's
    list was built at fractional positions ``built_frac`` and lattice ``built_lattice``
    (then its list within cutoff + skin is no longer complete). A pair vector (f_atom -
    f_centre + shift) L changes by at most twice the largest atom displacement plus
    sum_k |f_k| max_k |dL_k|, and |f_k| is bounded by the plane reach of cutoff + skin; so
    the loss stays exact, whatever the rebuild history."""
    moved = torch.linalg.norm(torch.bmm((now.frac - built_frac).unsqueeze(1),
                                        now.lattice[batch.atom_struct]).squeeze(1), dim=1)
    most = torch.zeros(len(batch), dtype=moved.dtype, device=moved.device)
    most = most.scatter_reduce(0, batch.atom_struct, moved, reduce="amax")
    reach, _ = plane_reach(built_lattice, cutoff + skin)
    d_lattice = torch.linalg.norm(now.lattice - built_lattice, dim=2).amax(1)
    bound = 2 * most + (reach + 1.0).sum(1) * d_lattice
    return (bound > skin) | ~torch.isfinite(bound)


class _PairLists:
    """The objective's pairs within cutoff + skin for a working batch. A row's pairs are
    searched again only when one of them may have crossed the skin since that row's own
    last search (:func:`_outside_skin`), or when asked (a restarted row): one fast row
    no longer makes the whole batch search again. Rows leaving the batch take their
    pairs out (:func:`take_pairs`), so the rest search nothing."""

    def __init__(self, env: Objective, skin: float) -> None:
        self.env, self.skin = env, skin
        self.pairs: Pairs | None = None
        self.frac = self.lattice = None  # geometry each row's list was searched at

    @torch.no_grad()
    def update(self, batch: Batch, R: torch.Tensor, redo: torch.Tensor) -> Pairs | None:
        """Complete pairs for R; ``redo`` (B,) bool: rows to search again in any case."""
        if self.frac is not None and self.pairs is None:
            return None  # the objective reads no pairs
        now = positions(batch, R)
        if self.frac is not None:
            redo = redo | _outside_skin(batch, now, self.frac, self.lattice, self.env.cutoff,
                                        self.skin)
            if not bool(redo.any()):
                return self.pairs
        if self.frac is None or bool(redo.all()):
            self.pairs = self.env.pairs(batch, R, skin=self.skin)
            self.frac, self.lattice = now.frac, now.lattice
            return self.pairs
        idx = torch.nonzero(redo).flatten()
        found = self.env.pairs(batch.take(idx), R[idx], skin=self.skin)
        self.pairs = replace_pairs(batch, self.pairs, idx, found)
        self.frac = torch.where(redo[batch.atom_struct, None], now.frac, self.frac)
        self.lattice = torch.where(redo[:, None, None], now.lattice, self.lattice)
        return self.pairs

    def take(self, batch: Batch, idx: torch.Tensor) -> None:
        """Keep the lists of rows ``idx`` (ascending) of ``batch``, as ``batch.take(idx)``."""
        if self.frac is None:
            return
        if self.pairs is not None:
            self.pairs = take_pairs(batch, self.pairs, idx)
        self.frac, self.lattice = self.frac[batch.members(idx)[1]], self.lattice[idx]


def _restart_noise(ids: np.ndarray, restarts: np.ndarray, width: int, cfg: RefineConfig
                   ) -> np.ndarray:
    """Noise of each hopping row's restart: standard normal times ``restart /
    cfg.restarts``, so the first hops stay near the row's best state (often a site or
    two from valid) and only later ones roam. A function of (seed, row id, restart
    number) only: a row's refinement does not depend on which batch, shard or rank it
    shares, so serial, sharded and MPI runs give the same rows."""
    noise = np.stack([np.random.default_rng([cfg.seed, int(i), int(r)]).standard_normal(width)
                      for i, r in zip(ids, restarts)])
    return noise * (np.asarray(restarts) / cfg.restarts)[:, None]


def _restart(R: torch.Tensor, kind: torch.Tensor, state, hop: torch.Tensor, noise: torch.Tensor,
             cfg: RefineConfig):
    """Perturb the samples ``hop`` (coordinates and lattice lengths) by ``noise`` (one row
    per hopping sample) and give them a fresh optimiser state: a basin hop out of a
    minimum that is not valid."""
    full = torch.zeros_like(R)
    full[hop] = noise.to(R)
    moved = torch.where(kind == COORD, R + cfg.restart_coord_sigma * full, R)
    moved = torch.where(kind == LENGTH, R * (1 + cfg.restart_length_sigma * full), moved)
    R = torch.where(hop[:, None], _apply_bounds(moved, kind, cfg), R)
    fresh = adam_init(R)
    for name in fresh.__dataclass_fields__:
        old, new = getattr(state, name), getattr(fresh, name)
        mask = hop.reshape(-1, *([1] * (old.dim() - 1)))
        setattr(state, name, torch.where(mask, new, old))
    return R, state


def refine_batch(batch: Batch, ids: np.ndarray, env: Objective, cfg: RefineConfig,
                 on_step: Callable[[int], None] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                            list[RefineStatus], list[str]]:
    """Refine one batch (``ids``: the rows' stable ids, which seed their restarts)
    under the objective ``env`` (an :class:`~hpcxtal.refine.objective.Objective` or a
    target :class:`~hpcxtal.descriptor.target.Environment`: same methods).

    Every ``cfg.check_every`` steps (from step 0, so a valid input counts) each sample's
    validity is checked: a valid sample whose loss fell by less than ``flat_tolerance``
    stops; an invalid one that stopped improving hops (a perturbed restart from its
    lowest-loss state, the noise growing with the restart number) or, once it has had a
    valid state or used its ``cfg.restarts``, stalls. A row ends in its last state if
    valid, else in its lowest-loss valid state seen at a check, else in its lowest-loss
    state. Returns final R (B, D), loss (B,), valid (B,), steps (B,), a status per row
    and why a row failed ("" for the others).
    """
    n = len(batch)
    R_all = batch.R0.detach().clone()
    steps = torch.zeros(n, dtype=torch.long, device=batch.device)
    status = [RefineStatus.MAX_STEPS] * n
    reason = [""] * n
    work = torch.arange(n, device=batch.device)  # rows of the full batch still refined
    wb, R = batch, R_all.clone()
    state = adam_init(R)
    scale = _step_scale(wb, cfg)
    inf = torch.full((n,), float("inf"), dtype=R.dtype, device=R.device)
    last_check, best_loss, valid_loss = inf.clone(), inf.clone(), inf.clone()
    best_R, valid_R = R_all.clone(), R_all.clone()
    restarts = np.zeros(n, dtype=np.int64)
    lists = _PairLists(env, cfg.skin_A)
    redo = torch.zeros(n, dtype=torch.bool, device=batch.device)
    for step in range(cfg.max_steps):
        pairs = lists.update(wb, R.detach(), redo)
        redo = torch.zeros_like(redo)
        Rg = R.detach().requires_grad_(True)
        loss = env.loss(wb, Rg, pairs)
        grad, = torch.autograd.grad(loss.sum(), Rg)
        loss = loss.detach()
        bad_R, bad_loss = ~torch.isfinite(R).all(1), ~torch.isfinite(loss)
        bad = bad_R | bad_loss | ~torch.isfinite(grad).all(1)
        better = loss < best_loss[work]
        best_loss[work] = torch.where(better, loss, best_loss[work])
        best_R[work] = torch.where(better[:, None], R, best_R[work])
        stop = bad | (loss < cfg.loss_tolerance)
        for k in torch.nonzero(bad).flatten().tolist():
            status[int(work[k])] = RefineStatus.FAILED
            what = "coordinates" if bad_R[k] else "loss" if bad_loss[k] else "gradient"
            reason[int(work[k])] = f"non-finite {what} at step {step}"
        for k in torch.nonzero(stop & ~bad).flatten().tolist():
            status[int(work[k])] = RefineStatus.CONVERGED
        hop = torch.zeros_like(stop)
        if step % cfg.check_every == 0:
            valid = env.validity(wb, R, pairs) & ~bad
            better = valid & (loss < valid_loss[work])
            valid_loss[work] = torch.where(better, loss, valid_loss[work])
            valid_R[work] = torch.where(better[:, None], R, valid_R[work])
            no_gain = loss > last_check[work] * (1 - cfg.flat_tolerance)
            flat = ~stop & valid & no_gain
            stuck = ~stop & ~valid & (no_gain | (state.scale <= cfg.optim.min_scale * (1 + 1e-9)))
            work_np = work.cpu().numpy()
            may_hop = (restarts[work_np] < cfg.restarts) & ~np.isfinite(valid_loss[work].cpu().numpy())
            hop = stuck & torch.as_tensor(may_hop, device=stuck.device)
            for k in torch.nonzero(flat).flatten().tolist():
                status[int(work[k])] = RefineStatus.VALID_FLAT
            for k in torch.nonzero(stuck & ~hop).flatten().tolist():
                status[int(work[k])] = RefineStatus.STALLED
            stop = stop | flat | (stuck & ~hop)
            last_check[work] = torch.where(hop, torch.full_like(loss, float("inf")), loss)
        active = ~stop & ~hop
        R = _apply_bounds(adam_step(R, grad, loss, state, cfg.optim, active, scale), wb.kind, cfg)
        steps[work] += active.long()
        if bool(hop.any()):
            rows = work.cpu().numpy()[hop.cpu().numpy()]
            restarts[rows] += 1
            noise = _restart_noise(ids[rows], restarts[rows], R.shape[1], cfg)
            R, state = _restart(torch.where(hop[:, None], best_R[work], R), wb.kind, state, hop,
                                torch.from_numpy(noise), cfg)
            redo = hop
        R_all[work] = R.detach()
        if on_step is not None:
            on_step(step + 1)
        if bool(stop.all()):
            break
        if bool(stop.any()):  # drop finished samples from the working set
            keep = torch.nonzero(~stop).flatten()
            lists.take(wb, keep)
            work, wb, R, redo = work[keep], wb.take(keep), R[keep], redo[keep]
            state, scale = state.take(keep), scale[keep]
    with torch.no_grad():  # last state if valid, else the best valid one, else the lowest loss
        valid = env.validity(batch, R_all)
        fallback = torch.where(torch.isfinite(valid_loss)[:, None], valid_R, best_R)
        R_all = torch.where(valid[:, None], R_all, fallback)
        valid = env.validity(batch, R_all)
        final_loss = env.loss(batch, R_all)
    return R_all, final_loss, valid, steps, status, reason


def use_threads(cfg: RefineConfig) -> None:
    """Give torch ``cfg.threads`` CPU threads (if set) before any refinement kernel runs:
    float results depend on the thread count, so it must not depend on what the process
    ran before (a resumed round runs in a fresh process, an uninterrupted one does not)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def refine_table(table, cfg: RefineConfig, progress: Callable[[int, int], None] | None = None
                 ) -> RefineResult:
    """Refine every row of a table (any order; batches are built in layout order).

    ``progress(rows_done, valid_so_far)`` is called after each batch.
    """
    use_threads(cfg)
    device, dtype = cfg.torch_device(), cfg.torch_dtype()
    env = build_objective(cfg, dtype=dtype, device=device)
    order = table.layout_order()
    ordered = table.take(order)
    n = len(table)
    from hpcxtal.crystal.freevars import row_layout

    atoms = np.array([row_layout(int(s), w).n_atoms for s, w in zip(ordered["spg"], ordered["wps"])])
    cell = np.array(table["cell"], dtype=float)
    xyz = np.array(table["xyz"], dtype=float)
    loss = np.full(n, np.nan)
    valid = np.zeros(n, dtype=bool)
    steps = np.zeros(n, dtype=np.int64)
    status, reason = [RefineStatus.MAX_STEPS] * n, [""] * n
    done = n_valid = 0
    for idx in plan_batches(atoms, cfg.max_batch_atoms):
        rows = order[idx]
        batch = build_batch(ordered.take(idx), dtype=dtype, device=device)
        R, b_loss, b_valid, b_steps, b_status, b_reason = refine_batch(
            batch, np.asarray(ordered["id"])[idx], env, cfg)
        c, x = rows_from_R(batch, R)
        cell[rows], xyz[rows] = c, x
        loss[rows] = b_loss.cpu().double().numpy()
        valid[rows] = b_valid.cpu().numpy()
        steps[rows] = b_steps.cpu().numpy()
        for r, s, why in zip(rows, b_status, b_reason):
            status[r], reason[r] = s, why
        done += len(rows)
        n_valid += int(b_valid.sum())
        if progress is not None:
            progress(done, n_valid)
    return RefineResult(cell, xyz, loss, valid, steps, status, reason)
