"""The distance-matrix objective: refine rows toward a target atomic distance matrix
(AlphaCrystal-II's reconstruction task, done by batched gradient descent in the
symmetry-reduced variables instead of a genetic algorithm).

Two modes (:class:`~hpcxtal.refine.config.DistanceMatrixSettings`):

- ``sorted``: the minimum-image distance of every ordered atom pair i != j of the cell,
  sorted, against the target's sorted list: loss = mean squared difference (Å²), so
  ``sqrt(loss)`` is the distance-matrix RMSE. Sorting makes the loss independent of
  how atoms are numbered; the sorted RMSE is the smallest RMSE over all pairings of the
  two matrices' entries (rearrangement inequality), a lower bound of the ordered-matrix
  RMSE of the AlphaCrystal-II paper under any atom correspondence. Rows need the
  target's atom count. When the target's elements are known (a reference structure, or
  ``elements`` beside a matrix) the comparison is **element-resolved**: pairs are
  grouped by their (element i, element j) class and sorted within each class, so a
  Na-Cl distance is only ever compared with a Na-Cl distance (the sorted RMSE is then
  the smallest over atom correspondences that keep elements); rows need the target's
  composition. One element: the same list as unresolved.
- ``histogram``: per-atom Gaussian-smeared pair-distance distribution within
  ``cutoff_A`` (all images), against the reference's: loss = ``bin * sum_k (h_k -
  t_k)^2``, summed over the reference's pair classes (one histogram per (element i,
  element j); a row's pairs of a class the reference lacks go to one more histogram
  whose target is empty). Any atom count, so it suits campaigns whose rows differ in
  size.

Metrics: ``dm_rmse_A`` (sorted RMSE) and ``dm_overlap`` (share of sorted entries that
agree within ``overlap_tolerance_A``; our permutation-free stand-in for the paper's
distance-map overlap, which compares atom-ordered matrices).

Minimum images are searched among the 27 images of the wrapped fractional difference,
as pymatgen's ``Lattice.get_all_distances`` does in a reduced cell; for the strongly
skewed cells this misses a shorter image the loss is too large, never too small.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hpcxtal.descriptor.batch import Batch, positions, site_pair_vectors
from hpcxtal.descriptor.neighbors import Pairs
from hpcxtal.refine.config import DistanceMatrixSettings, RefineConfig
from hpcxtal.refine.objective import Objective

_IMAGES = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                   dtype=float)


#: Pair class of atoms with atomic numbers (z_i, z_j): ``z_i * PAIR_BASE + z_j``.
PAIR_BASE = 128


def class_sorted(dm: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
    """Off-diagonal entries of an (N, N) distance matrix sorted by pair class of
    ``numbers`` (atomic numbers in the matrix's atom order; None: one class), then by
    distance: the target list of the ``sorted`` mode."""
    off = ~np.eye(len(dm), dtype=bool)
    d = np.asarray(dm)[off]
    if numbers is None:
        return np.sort(d)
    z = np.asarray(numbers, dtype=np.int64)
    key = (z[:, None] * PAIR_BASE + z[None, :])[off]
    return d[np.lexsort((d, key))]


def pair_class_counts(numbers: np.ndarray) -> dict[int, int]:
    """Ordered pairs per pair class among atoms of atomic numbers ``numbers``."""
    z, count = np.unique(np.asarray(numbers, dtype=np.int64), return_counts=True)
    return {int(a * PAIR_BASE + b): int(ca * (cb - (a == b))) for a, ca in zip(z, count)
            for b, cb in zip(z, count) if ca * (cb - (a == b)) > 0}


def reference_distances(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-image distance matrix of a structure file (pymatgen's
    ``Structure.distance_matrix``) and its atoms' atomic numbers."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        atoms = read(str(path))
    except Exception as err:  # noqa: BLE001  (ASE raises many kinds for bad files)
        raise ValueError(f"{path}: not a structure file ASE can read ({err})") from None
    return (np.asarray(AseAtomsAdaptor.get_structure(atoms).distance_matrix),
            atoms.get_atomic_numbers())


def load_distances(path: str | Path, elements: list[str] | None = None) -> np.ndarray:
    """Target distances from a text file: an N x N matrix (zero diagonal) or a list of
    the N(N-1) ordered-pair distances, whitespace-separated; sorted (by pair class
    first when ``elements``, the element of each of the matrix's atoms, is given)."""
    from ase.data import atomic_numbers

    try:
        values = np.loadtxt(path, ndmin=1)
    except ValueError as err:
        raise ValueError(f"{path}: not a file of numbers ({err})") from None
    square = values.ndim == 2 and values.shape[0] == values.shape[1]
    flat = values[~np.eye(len(values), dtype=bool)] if square else values.ravel()
    n = int(round((1 + np.sqrt(1 + 4 * len(flat))) / 2))
    if n * (n - 1) != len(flat) or not np.all(np.isfinite(flat)) or np.any(flat <= 0):
        raise ValueError(f"{path}: need N(N-1) positive distances (every ordered pair of N "
                         f"atoms) or an N x N matrix; got {len(flat)} values")
    if elements is None:
        return np.sort(flat)
    if not square or len(elements) != n:
        raise ValueError(f"{path}: elements ({len(elements)} given) need an N x N matrix of "
                         f"the same N atoms")
    return class_sorted(values, np.array([atomic_numbers[e] for e in elements]))


def _pair_index(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(site, atom, centre) of every ordered atom pair of each row: each site's
    representative atom (``centre``) against every other atom of its row, repeated
    multiplicity times (symmetry maps the orbit's distance lists onto each other)."""
    n = batch.n_atoms
    if bool((n != n[0]).any()):
        raise ValueError(f"sorted distance matrices need rows of one atom count, got "
                         f"{sorted(set(n.tolist()))}")
    count = n[batch.site_struct]
    site = torch.repeat_interleave(torch.arange(batch.n_sites, device=batch.device), count)
    first = (torch.cumsum(n, 0) - n)[batch.site_struct]
    offset = torch.cumsum(count, 0) - count
    atom = first[site] + torch.arange(len(site), device=batch.device) - offset[site]
    centre = batch.site_atom[site]
    keep = atom != centre
    site, atom, centre = site[keep], atom[keep], centre[keep]
    times = batch.site_mult[site]
    return tuple(torch.repeat_interleave(t, times) for t in (site, atom, centre))


def _pair_classes(batch: Batch, atom: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    z = torch.round(batch.atom_weight).long()
    return (z[centre] * PAIR_BASE + z[atom]).view(len(batch), -1)


def pair_classes(batch: Batch) -> torch.Tensor:
    """(B, N(N-1)) pair classes of each row's ordered atom pairs, sorted: the class
    column of :func:`pair_distances` with ``by_element`` (positions play no part)."""
    _, atom, centre = _pair_index(batch)
    return torch.sort(_pair_classes(batch, atom, centre), dim=1).values


def pair_distances(batch: Batch, R: torch.Tensor, by_element: bool = False) -> torch.Tensor:
    """(B, N(N-1)) sorted minimum-image distances of every ordered atom pair of each row,
    differentiable in R; every row must have the same atom count N. ``by_element``:
    sorted by pair class (:data:`PAIR_BASE`) first, then by distance."""
    site, atom, centre = _pair_index(batch)
    geo = positions(batch, R)
    delta = geo.frac[atom] - geo.frac[centre]
    delta = delta - torch.round(delta).detach()
    images = torch.as_tensor(_IMAGES, dtype=R.dtype, device=R.device)
    frac = delta.unsqueeze(1) + images  # (P, 27, 3)
    cart = torch.bmm(frac, geo.lattice[batch.site_struct[site]])
    dist = torch.sqrt((cart * cart).sum(-1).clamp_min(1e-12)).amin(1).view(len(batch), -1)
    order = torch.sort(dist.detach(), dim=1).indices
    if by_element:
        classes = torch.gather(_pair_classes(batch, atom, centre), 1, order)
        order = torch.gather(order, 1, torch.sort(classes, dim=1, stable=True).indices)
    return torch.gather(dist, 1, order)


def smeared_histogram(distances: torch.Tensor, owner: torch.Tensor, weight: torch.Tensor,
                      n_rows: int, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """(n_rows, K) sum over each row's distances of ``weight * N(grid; d, sigma)``."""
    g = torch.exp(-0.5 * ((grid - distances.unsqueeze(1)) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    out = torch.zeros(n_rows, len(grid), dtype=g.dtype, device=g.device)
    return out.index_add(0, owner, g * weight.unsqueeze(1))


class DistanceMatrixObjective(Objective):
    """Distance-matrix reconstruction (module docstring); valid when ``dm_rmse_A`` is
    below ``valid_rmse_A`` (sorted mode) if that is set."""

    name = "distance_matrix"
    settings_type = DistanceMatrixSettings

    def __init__(self, settings: DistanceMatrixSettings, *, refine: RefineConfig | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        self.settings = settings
        self.dtype, self.device = dtype, device
        from ase.data import atomic_numbers

        if settings.reference is not None:
            dm, numbers = reference_distances(settings.reference)
            target = class_sorted(dm, numbers)
        else:
            target = load_distances(settings.distances, settings.elements)
            numbers = (None if settings.elements is None else
                       np.array([atomic_numbers[e] for e in settings.elements]))
        self.target = torch.as_tensor(target, dtype=dtype, device=device)
        n = (1 + np.sqrt(1 + 4 * len(target))) / 2
        self.n_atoms = int(round(n))
        # element-resolved when the target's elements are known: the sorted pair classes
        # a row must have (None: every pair in one list, elements ignored)
        self.numbers, self.by_element = numbers, numbers is not None
        self.classes = None if numbers is None else torch.as_tensor(
            np.repeat(*zip(*sorted(pair_class_counts(numbers).items()))), device=device)
        self.sets_validity = settings.valid_rmse_A is not None
        if settings.mode == "histogram":
            self.cutoff = settings.cutoff_A
            self.grid = torch.arange(0.0, settings.cutoff_A + 3 * settings.sigma_A, settings.bin_A,
                                     dtype=dtype, device=device)
            self.histogram = self._reference_histogram(settings.reference)

    def _reference_histogram(self, path: str) -> torch.Tensor:
        """(C, K) the reference's histogram per pair class (``self.hist_classes``, the
        classes its pairs within the cutoff have, ascending)."""
        from ase.io import read
        from ase.neighborlist import neighbor_list

        atoms = read(path)
        i, j, dist = neighbor_list("ijd", atoms, self.settings.cutoff_A)
        z = atoms.get_atomic_numbers().astype(np.int64)
        keys = z[i] * PAIR_BASE + z[j]
        classes, owner = np.unique(keys, return_inverse=True)
        self.hist_classes = torch.as_tensor(classes, device=self.device)
        d = torch.as_tensor(dist, dtype=self.dtype, device=self.device)
        ones = torch.ones_like(d) / len(atoms)
        return smeared_histogram(d, torch.as_tensor(owner.reshape(-1), device=d.device), ones,
                                 len(classes), self.grid, self.settings.sigma_A)

    def _check_atoms(self, batch: Batch) -> None:
        wrong = sorted(set(batch.n_atoms.tolist()) - {self.n_atoms})
        if wrong:
            raise ValueError(f"distance_matrix: the target has {self.n_atoms} atoms, rows have "
                             f"{wrong}; use rows of the target's Wyckoff layout or mode histogram")

    def _check_composition(self, batch: Batch) -> None:
        if self.by_element:
            wrong = ~(pair_classes(batch) == self.classes).all(1)
            if bool(wrong.any()):
                b = int(torch.nonzero(wrong)[0])
                row = torch.round(batch.atom_weight[batch.atom_struct == b]).long().cpu()
                raise ValueError(f"distance_matrix: the target's composition is "
                                 f"{self._formula(self.numbers)}, a row's is "
                                 f"{self._formula(row.numpy())}; element-resolved "
                                 "targets need rows of the target's composition")

    @staticmethod
    def _formula(numbers) -> str:
        from ase.data import chemical_symbols

        z, count = np.unique(np.asarray(numbers, dtype=np.int64), return_counts=True)
        return "".join(sorted(chemical_symbols[a] + (str(c) if c > 1 else "")
                              for a, c in zip(z, count)))

    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        if self.settings.mode == "sorted":
            self._check_atoms(batch)
            self._check_composition(batch)
            return ((pair_distances(batch, R, self.by_element) - self.target) ** 2).mean(1)
        if pairs is None:
            pairs = self.pairs(batch, R)
        vec = site_pair_vectors(batch, R, pairs)
        d = torch.sqrt((vec * vec).sum(1).clamp_min(1e-12))
        near = d < self.settings.cutoff_A
        centre = pairs.centre[near]
        weight = batch.site_mult[centre].to(d.dtype) / batch.n_atoms[batch.site_struct[centre]].to(d.dtype)
        # one histogram per pair class of the reference, and one (target: empty) for the
        # pairs of classes the reference lacks
        z = torch.round(batch.atom_weight).long()
        key = z[batch.site_atom[centre]] * PAIR_BASE + z[pairs.atom[near]]
        n_cls = len(self.hist_classes)
        idx = torch.searchsorted(self.hist_classes, key).clamp_max(n_cls - 1)
        idx = torch.where(self.hist_classes[idx] == key, idx, n_cls)
        h = smeared_histogram(d[near], batch.site_struct[centre] * (n_cls + 1) + idx, weight,
                              len(batch) * (n_cls + 1), self.grid, self.settings.sigma_A)
        h = h.view(len(batch), n_cls + 1, -1)
        known = ((h[:, :n_cls] - self.histogram) ** 2).reshape(len(batch), -1).sum(1)
        return self.settings.bin_A * known + self.settings.bin_A * (h[:, n_cls] ** 2).sum(1)

    @torch.no_grad()
    def metrics(self, batch: Batch, R: torch.Tensor) -> dict[str, torch.Tensor]:
        """``dm_rmse_A`` and ``dm_overlap`` per row (NaN for rows of another atom count)."""
        rmse = torch.full((len(batch),), float("nan"), dtype=R.dtype, device=R.device)
        overlap = rmse.clone()
        same = torch.nonzero(batch.n_atoms == self.n_atoms).flatten()
        if len(same):
            diff = pair_distances(batch.take(same), R[same], self.by_element) - self.target
            rmse[same] = torch.sqrt((diff ** 2).mean(1))
            overlap[same] = (diff.abs() < self.settings.overlap_tolerance_A).to(R.dtype).mean(1)
        return {"dm_rmse_A": rmse, "dm_overlap": overlap}

    @torch.no_grad()
    def validity(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        return self.metrics(batch, R)["dm_rmse_A"] < self.settings.valid_rmse_A
