"""Shared fixtures-as-functions for the descriptor tests: pyxtal's SO3 as the reference
(with a shim for scipy >= 1.17, which removed ``scipy.special.sph_harm``), the bundled
SACADA rows and structures, and the generated candidate rows."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import os

import numpy as np
import pytest
import scipy.special

#: The shared raw data (``../shared/data`` beside the repository, or $HPCXTAL_SHARED_DATA).
SHARED_DATA = Path(os.environ.get("HPCXTAL_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))
GENERATED_CSV = SHARED_DATA / "generated_candidates_1k.csv"


def pyxtal_so3(nmax: int = 2, lmax: int = 4, rcut: float = 2.0, alpha: float = 1.5):
    """pyxtal's SO3 calculator (test reference only)."""
    if not hasattr(scipy.special, "sph_harm"):
        # sph_harm(m, l, azimuth, polar) == sph_harm_y(l, m, polar, azimuth)
        scipy.special.sph_harm = lambda m, l, phi, theta: scipy.special.sph_harm_y(l, m, theta, phi)
    from pyxtal.lego.SO3 import SO3

    return SO3(nmax=nmax, lmax=lmax, rcut=rcut, alpha=alpha)


@lru_cache(maxsize=1)
def sacada():
    """(rows table, quarantine table) of the bundled SACADA set."""
    from hpcxtal.data import SACADA_PATH
    from hpcxtal.store.hdf5 import read_table

    return read_table(SACADA_PATH)


@lru_cache(maxsize=1)
def generated():
    """Decoded rows of the generated candidates CSV (the undecodable ones left out)."""
    from hpcxtal.store.formats import read_csv

    if not GENERATED_CSV.exists():
        pytest.skip(f"{GENERATED_CSV} not present")
    table, _ = read_csv(GENERATED_CSV)
    return table


def batch_atoms(batch, geometry, k: int):
    """ASE Atoms of structure ``k`` of a batch (positions wrapped) and the atom indices
    of its site centres within it."""
    from ase import Atoms

    n = batch.n_atoms.numpy()
    off = np.concatenate([[0], np.cumsum(n)])
    frac = geometry.frac[off[k]:off[k + 1]].detach().cpu().double().numpy() % 1.0
    numbers = batch.atom_weight[off[k]:off[k + 1]].round().long().numpy()
    atoms = Atoms(numbers=numbers, scaled_positions=frac,
                  cell=geometry.lattice[k].detach().cpu().double().numpy(), pbc=True)
    sites = (batch.site_struct == k).nonzero().flatten()
    return atoms, (batch.site_atom[sites] - off[k]).numpy(), sites.numpy()


def relative_error(mine: np.ndarray, ref: np.ndarray) -> float:
    """Largest deviation of a site's spectrum over the largest magnitude of the
    reference spectrum of that site, maximised over sites."""
    scale = np.maximum(np.abs(ref).max(axis=1), 1e-300)
    return float((np.abs(mine - ref).max(axis=1) / scale).max())
