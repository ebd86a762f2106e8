"""Latent refinement (Algorithm 2): for rows still invalid, optimise a fresh latent
vector through the frozen generator decoder under each row's fixed condition (space
group + Wyckoff sites), minimising the refinement objective (by default the SO(3) loss);
the decoded rows then go back
to representation-space refinement.

The decoder gives 30 continuous values (cell and 8 sites' x, y, z); a fixed index map
picks the row's free variables R out of them (free lattice parameters, free
generator coordinates), so the loss is differentiable in z all the way through the
inverse GMM transform. Each row's starting z is seeded by (seed, row id, round), so
a row's result does not depend on its batch.
"""
from __future__ import annotations

import numpy as np
import torch

from hpcxtal.descriptor.batch import Batch, build_batch, rows_from_R
from hpcxtal.refine.config import LatentConfig
from hpcxtal.refine.objective import Objective
from hpcxtal.refine.optim import adam_init, adam_step
from hpcxtal.store.table import Table



def value_index(batch: Batch) -> torch.Tensor:
    """(B, D) index into the flattened (B, 30) decoded values for every free variable
    (-1 for padding): lattice parameters from columns 0-5, site coordinates from
    6 + 3 * slot + axis."""
    b, width = batch.R0.shape
    index = torch.full((b * width,), -1, dtype=torch.long, device=batch.device)
    rows = torch.arange(b, device=batch.device)[:, None].expand(b, 6)
    lat = batch.lat_src >= 0
    index[batch.lat_src[lat]] = rows[lat] * 30 + torch.arange(6, device=batch.device).expand(b, 6)[lat]
    site = batch.site_src >= 0
    axis = torch.arange(3, device=batch.device).expand_as(batch.site_src)
    cols = 6 + 3 * batch.site_slot[:, None].expand_as(batch.site_src) + axis
    index[batch.site_src[site]] = batch.site_struct[:, None].expand_as(batch.site_src)[site] * 30 + cols[site]
    return index.view(b, width)


def free_variables(values: torch.Tensor, index: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """R from decoded values: gathered by ``index``, coordinates wrapped into [0, 1)."""
    from hpcxtal.crystal.freevars import COORD

    flat = values.reshape(-1)
    R = torch.where(index >= 0, flat[index.clamp(min=0)], torch.zeros((), dtype=values.dtype))
    return torch.where(kind == COORD, R - torch.floor(R), R)


def latent_refine(table: Table, env: Objective, cfg: LatentConfig, seed: int, round_: int,
                  dtype: torch.dtype = torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """New (cell, xyz) row columns for every row of ``table`` from its optimised
    latent vector (rows keep their space group and Wyckoff sites)."""
    from hpcxtal.generate.plugin import load_generator

    # float64: a row's result must not depend on the rows it is batched with (float32
    # matrix products round differently with the batch size; MPI parts must equal serial)
    gen = load_generator(cfg.generator, dtype=torch.float64)
    if gen.latent_dim is None or not gen.conditional:
        raise ValueError(f"{gen.path}: latent refinement needs a conditional generator with "
                         f"a latent space (cvae, diffusion, gan), not {gen.kind}")
    cell = np.array(table["cell"], dtype=float)
    xyz = np.array(table["xyz"], dtype=float)
    ids = np.asarray(table["id"])
    for start in range(0, len(table), cfg.max_batch_rows):
        rows = np.arange(start, min(start + cfg.max_batch_rows, len(table)))
        part = table.take(rows)
        batch = build_batch(part, dtype=dtype)
        index, kind = value_index(batch), batch.kind
        spg = torch.as_tensor(np.asarray(part["spg"], dtype=np.int64))
        wps = torch.as_tensor(np.asarray(part["wps"], dtype=np.int64))
        z = torch.from_numpy(np.stack([np.random.default_rng([seed, int(i), round_, 1])
                                       .standard_normal(gen.latent_dim) for i in ids[rows]]))
        state = adam_init(z)
        active = torch.ones(len(rows), dtype=torch.bool)
        for _ in range(cfg.steps):
            zg = z.detach().requires_grad_(True)
            R = free_variables(gen.decode(zg, spg, wps).to(dtype), index, kind)
            loss = env.loss(batch, R)
            grad, = torch.autograd.grad(loss.sum(), zg)
            z = adam_step(z, grad, loss.detach().to(z.dtype), state, cfg.optim, active)
        with torch.no_grad():
            R = free_variables(gen.decode(z, spg, wps).to(dtype), index, kind)
        cell[rows], xyz[rows] = rows_from_R(batch, R)
    return cell, xyz
