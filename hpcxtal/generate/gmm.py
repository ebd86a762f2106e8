"""Mode-specific normalisation of the continuous row columns by 1-D Gaussian mixtures.

Lattice parameters and coordinates are multi-modal (cell lengths cluster at a few
values, coordinates at special values such as 0, 1/4, 1/2); a network predicts them
better as "which mode" (a category) plus "where in that mode" (a standardised residual)
than as one raw number. Each of the 30 continuous columns (a, b, c, alpha, beta, gamma,
then x, y, z of the 8 sites) gets its own K-component mixture, fitted by EM on the
values that are real (occupied sites, free coordinates). :meth:`ColumnGMM.inverse` maps
component probabilities and residuals back to values in torch, differentiably, so
latent refinement can push gradients from a decoded crystal back to the latent vector.

The discrete (binned) representation LEGO-xtal trains its "-Dis" GAN and VAE on
(pyxtal's ``get_tabular_representation(discrete=True)``: a fractional coordinate x is
bin ``floor(x N)`` of ``N`` equal bins, decoded as ``k / N``; cell parameters stay
continuous) is the same object with the coordinate columns replaced by ``N`` point
"components" at ``k / N`` of width 0 (:meth:`ColumnGMM.fit` with ``n_bins``): the
category is the bin, the residual is always 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hpcxtal.crystal.row import N_SITES
from hpcxtal.crystal.symmetry import FREE_LATTICE_PARAMETERS, lattice_system, wyckoff_cost_tables

#: Continuous columns in order: 6 cell parameters, then x, y, z of each site.
N_COLUMNS = 6 + 3 * N_SITES
#: The coordinate columns (x, y, z of the 8 sites): the ones the binned representation bins.
COORD_COLUMNS = slice(6, N_COLUMNS)
#: Smallest component width relative to the column's spread (keeps point masses finite).
MIN_STD_FRACTION = 1e-3

# Which of a, b, c, alpha, beta, gamma are free per lattice system (the rest are
# fixed or tied by symmetry and are restored by decode()).
_FREE_CELL = {
    "triclinic": (1, 1, 1, 1, 1, 1),
    "monoclinic": (1, 1, 1, 0, 1, 0),
    "orthorhombic": (1, 1, 1, 0, 0, 0),
    "tetragonal": (1, 0, 1, 0, 0, 0),
    "trigonal": (1, 0, 1, 0, 0, 0),
    "hexagonal": (1, 0, 1, 0, 0, 0),
    "cubic": (1, 0, 0, 0, 0, 0),
}
assert all(sum(v) == FREE_LATTICE_PARAMETERS[k] for k, v in _FREE_CELL.items())


def row_values(cell: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """(N, 30) continuous columns of rows: cell (N, 6) and xyz (N, 8, 3)."""
    return np.concatenate([np.asarray(cell, float), np.asarray(xyz, float).reshape(len(cell), -1)], 1)


def free_mask(spg: np.ndarray, wps: np.ndarray) -> np.ndarray:
    """(N, 30) bool: which columns of each row are free numbers (free lattice parameters
    of its crystal system, free coordinates of its occupied sites). Only these carry
    information; decode() restores the rest from the symmetry."""
    spg = np.asarray(spg, dtype=np.int64)
    wps = np.asarray(wps, dtype=np.int64)
    cell_free = np.array([_FREE_CELL[lattice_system(int(s))] for s in range(1, 231)], bool)
    free_xyz = _free_xyz_table()
    mask = np.zeros((len(spg), N_COLUMNS), dtype=bool)
    mask[:, :6] = cell_free[spg - 1]
    occupied = wps >= 0
    site_free = free_xyz[spg[:, None], np.where(occupied, wps, 0)] & occupied[..., None]
    mask[:, 6:] = site_free.reshape(len(spg), -1)
    return mask


@lru_cache(maxsize=1)
def _free_xyz_table() -> np.ndarray:
    """(231, 27, 3) bool: free coordinates of every Wyckoff position."""
    from hpcxtal.crystal.symmetry import space_group

    _, _, ok = wyckoff_cost_tables()
    table = np.zeros((*ok.shape, 3), dtype=bool)
    for spg in range(1, 231):
        for wp in space_group(spg).wyckoff:
            table[spg, wp.index] = wp.free
    return table


def fit_gmm_1d(x: np.ndarray, k: int, n_iter: int = 200, tol: float = 1e-6,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM fit of a ``k``-component 1-D Gaussian mixture: (weights, means, stds).

    Fewer components are used when the data have fewer distinct values than ``k``;
    widths are floored at :data:`MIN_STD_FRACTION` of the data's spread.
    """
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return np.ones(1), np.zeros(1), np.ones(1)
    distinct = np.unique(np.round(x, 9))
    k = max(1, min(k, len(distinct)))
    spread = max(float(x.std()), float(np.ptp(x)), 1e-6)
    floor = MIN_STD_FRACTION * spread
    rng = np.random.default_rng(seed)
    means = np.quantile(x, (np.arange(k) + 0.5) / k) + floor * rng.standard_normal(k)
    stds = np.full(k, max(spread / k, floor))
    weights = np.full(k, 1.0 / k)
    last = -np.inf
    for _ in range(n_iter):
        logp = (-0.5 * ((x[:, None] - means) / stds) ** 2 - np.log(stds) + np.log(weights))
        top = logp.max(axis=1, keepdims=True)
        ll = float(np.mean(top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))))
        resp = np.exp(logp - top)
        resp /= resp.sum(axis=1, keepdims=True)
        nk = resp.sum(axis=0) + 1e-12
        weights = nk / nk.sum()
        means = (resp * x[:, None]).sum(axis=0) / nk
        var = (resp * (x[:, None] - means) ** 2).sum(axis=0) / nk
        stds = np.sqrt(np.maximum(var, floor ** 2))
        if abs(ll - last) < tol:
            break
        last = ll
    keep = weights > 1e-6
    order = np.argsort(means[keep])
    return weights[keep][order], means[keep][order], stds[keep][order]


@dataclass
class ColumnGMM:
    """Per-column mixtures, padded to ``K`` components (``active`` marks real ones)."""

    weights: np.ndarray  # (C, K)
    means: np.ndarray  # (C, K)
    stds: np.ndarray  # (C, K)
    active: np.ndarray  # (C, K) bool

    @property
    def n_columns(self) -> int:
        return self.means.shape[0]

    @property
    def n_components(self) -> int:
        return self.means.shape[1]

    @classmethod
    def fit(cls, values: np.ndarray, mask: np.ndarray, k: int = 10, seed: int = 0,
            n_bins: int = 0) -> "ColumnGMM":
        """Fit column ``j`` on ``values[mask[:, j], j]``; columns with no data get one
        standard-normal component. ``n_bins`` > 0: the coordinate columns are ``n_bins``
        equal bins instead (the binned representation), and every column is padded to
        ``max(k, n_bins)`` components."""
        n_cols = values.shape[1]
        width = max(k, n_bins)
        w = np.zeros((n_cols, width))
        m = np.zeros((n_cols, width))
        s = np.ones((n_cols, width))
        for j in range(n_cols):
            if n_bins and COORD_COLUMNS.start <= j < COORD_COLUMNS.stop:
                w[j, :n_bins], m[j, :n_bins], s[j, :n_bins] = 1.0 / n_bins, np.arange(n_bins) / n_bins, 0.0
                continue
            wj, mj, sj = fit_gmm_1d(values[mask[:, j], j], k, seed=seed + j)
            n = len(wj)
            w[j, :n], m[j, :n], s[j, :n] = wj, mj, sj
        return cls(w, m, s, w > 0)

    @property
    def binned(self) -> np.ndarray:
        """(C,) bool: columns that are bins (components of width 0), not mixtures."""
        return ~(self.stds * self.active > 0).any(1)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(component (N, C) int, residual (N, C)): the most responsible component of
        each value and the value's offset from it in units of that component's width;
        in a binned column, the bin of the value modulo 1 and residual 0."""
        values = np.asarray(values, dtype=float)
        binned = self.binned
        stds = np.where(binned[:, None], 1.0, self.stds)
        x = values[..., None]
        logp = -0.5 * ((x - self.means) / stds) ** 2 - np.log(stds) + np.log(
            np.where(self.active, self.weights, 1.0))
        logp = np.where(self.active, logp, -np.inf)
        comp = np.argmax(logp, axis=-1)
        cols = np.arange(self.n_columns)
        resid = (values - self.means[cols, comp]) / stds[cols, comp]
        n_bins = self.active.sum(1)
        bins = np.minimum(np.floor((values % 1.0) * n_bins + 1e-9), n_bins - 1).astype(comp.dtype)
        return np.where(binned, bins, comp), np.where(binned, 0.0, resid)

    def inverse(self, probs, residual):
        """Values from component probabilities ``probs`` (N, C, K) (one-hot for a hard
        choice) and residuals (N, C): ``sum_k p_k (mu_k + sigma_k r)``. Torch tensors in,
        torch tensor out, differentiable in both arguments."""
        import torch

        means = torch.as_tensor(self.means, dtype=residual.dtype, device=residual.device)
        stds = torch.as_tensor(self.stds, dtype=residual.dtype, device=residual.device)
        return (probs * means).sum(-1) + (probs * stds).sum(-1) * residual

    def inverse_numpy(self, comp: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """Values from hard components (N, C) and residuals (N, C), in numpy."""
        cols = np.arange(self.n_columns)
        return self.means[cols, comp] + self.stds[cols, comp] * residual

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays for a model file."""
        return {"weights": self.weights, "means": self.means, "stds": self.stds,
                "active": self.active}

    @classmethod
    def from_state(cls, state: dict) -> "ColumnGMM":
        return cls(*(np.asarray(state[k]) for k in ("weights", "means", "stds", "active")))
