"""The continuous part of a row as the diffusion model (and other networks on raw
values) sees it: 30 standardised numbers, the free ones only.

A row's condition (space group, Wyckoff sites) decides which of its 30 continuous
columns are free (:func:`~hpcxtal.generate.gmm.free_mask`); the others are fixed or
tied by symmetry. Models on this representation see and predict the free columns only
(the rest are zero), and :func:`values_from_scaled` restores the tied lattice lengths
from the free ones before :func:`hpcxtal.crystal.row.decode` imposes the symmetry, so a
model never has to learn what the space group already says.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from hpcxtal.crystal.symmetry import lattice_system
from hpcxtal.generate.cvae import condition_onehot
from hpcxtal.generate.gmm import N_COLUMNS, free_mask, row_values
from hpcxtal.store.table import Table

#: Which cell column a tied lattice length copies (b = a in tetragonal, trigonal and
#: hexagonal cells; b = c = a in cubic ones); -1: free or an angle.
_LENGTH_SOURCE = {"tetragonal": (-1, 0, -1), "trigonal": (-1, 0, -1),
                  "hexagonal": (-1, 0, -1), "cubic": (-1, 0, 0)}


@lru_cache(maxsize=1)
def _source_table() -> np.ndarray:
    """(231, 30) int: for every space group, the column each column takes its value from
    (itself unless it is a tied length)."""
    table = np.tile(np.arange(N_COLUMNS), (231, 1))
    for spg in range(1, 231):
        for col, src in enumerate(_LENGTH_SOURCE.get(lattice_system(spg), (-1, -1, -1))):
            if src >= 0:
                table[spg, col] = src
    return table


@dataclass
class ColumnScaler:
    """Per-column mean and spread of the free values of the training rows."""

    mean: np.ndarray  # (30,)
    std: np.ndarray  # (30,)

    @classmethod
    def fit(cls, values: np.ndarray, mask: np.ndarray) -> "ColumnScaler":
        """Columns with no free value get mean 0 and spread 1."""
        count = mask.sum(0)
        mean = np.where(count > 0, (values * mask).sum(0) / np.maximum(count, 1), 0.0)
        var = np.where(count > 1, (((values - mean) * mask) ** 2).sum(0) / np.maximum(count - 1, 1), 1.0)
        return cls(mean, np.sqrt(np.maximum(var, 1e-6)))

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, state: dict) -> "ColumnScaler":
        return cls(np.asarray(state["mean"], float), np.asarray(state["std"], float))


def scaled_table(table: Table, scaler: ColumnScaler | None = None
                 ) -> tuple[dict[str, torch.Tensor], ColumnScaler]:
    """Training tensors of ``table``: ``x`` (N, 30) standardised free values (0 elsewhere),
    ``mask`` (N, 30) free columns, ``cond`` the one-hot condition; the scaler is fitted
    here if not given."""
    values = row_values(table["cell"], table["xyz"])
    mask = free_mask(table["spg"], table["wps"])
    scaler = scaler or ColumnScaler.fit(values, mask)
    x = np.where(mask, (values - scaler.mean) / scaler.std, 0.0)
    spg = torch.as_tensor(table["spg"].astype(np.int64))
    wps = torch.as_tensor(table["wps"].astype(np.int64))
    return {"x": torch.as_tensor(x, dtype=torch.float32), "mask": torch.as_tensor(mask),
            "cond": condition_onehot(spg, wps)}, scaler


def condition_tensors(spg: torch.Tensor, wps: torch.Tensor, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot condition, free-column mask as ``dtype``) of conditions (N,), (N, 8)."""
    mask = free_mask(spg.cpu().numpy(), wps.cpu().numpy())
    return (condition_onehot(spg.long(), wps.long()).to(dtype),
            torch.as_tensor(mask, dtype=dtype, device=spg.device))


def values_from_scaled(x: torch.Tensor, scaler: ColumnScaler, spg: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """(N, 30) row values from standardised ``x``: free columns unscaled, tied lengths
    copied from their free source, other fixed columns 0 (decode restores them).
    Differentiable in ``x``."""
    mean = torch.as_tensor(scaler.mean, dtype=x.dtype, device=x.device)
    std = torch.as_tensor(scaler.std, dtype=x.dtype, device=x.device)
    values = (x * std + mean) * mask
    source = torch.as_tensor(_source_table(), device=x.device)[spg.long()]
    return torch.gather(values, 1, source)
