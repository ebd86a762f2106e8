"""Generation metrics of a sampled pool, the same for every generator kind.

Per sample (:func:`sample_checks`): whether it decodes into a row, the space group
spglib finds (0.01 Å), the primitive atom count, the density, and the CDVAE structure
validity (no two atoms, periodic images included, closer than 0.5 Å). Per pool
(:func:`pool_metrics`): decode rate, stated-symmetry rate, validity rate, and the
Wasserstein (earth mover's) distances between the valid samples' densities and
primitive atom counts and a reference set's, as CDVAE reports them for density and
number of elements (here: atoms per primitive cell; carbon has one element).
:func:`reconstruction` scores a conditional autoencoder: rows encoded to their posterior
means and decoded again, matched to the source by pymatgen's StructureMatcher with
CDVAE's tolerances (stol 0.5, angle_tol 10, ltol 0.3): match rate and the mean
normalised RMS distance of the matches.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from hpcxtal.store.table import Table

#: CDVAE's structure validity: the shortest interatomic distance must exceed this (Å).
MIN_DISTANCE_A = 0.5
#: g/cm^3 per (amu / Å^3).
AMU_PER_A3_IN_G_PER_CM3 = 1.66053907


@dataclass(frozen=True)
class Checks:
    """One structure's numbers (``spg_found`` 0 where spglib fails)."""

    spg_found: int
    n_primitive: int
    density_g_cm3: float
    valid: bool


def structure_checks(atoms, symprec: float = 0.01) -> Checks:
    """spglib space group and primitive size, density and CDVAE validity of ASE ``atoms``."""
    import spglib
    from ase.neighborlist import neighbor_list

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():  # spglib 2.x warns about its own error-handling switch
        warnings.simplefilter("ignore", DeprecationWarning)
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    spg = int(data.number) if data is not None else 0
    n_prim = len(set(data.mapping_to_primitive.tolist())) if data is not None else len(atoms)
    density = float(atoms.get_masses().sum() / atoms.get_volume() * AMU_PER_A3_IN_G_PER_CM3)
    valid = len(neighbor_list("d", atoms, MIN_DISTANCE_A)) == 0
    return Checks(spg, n_prim, density, valid)


def pool_checks(pool: Table) -> list[Checks]:
    """:func:`structure_checks` of every row of ``pool`` (its stored structure or the row
    expanded, :meth:`Table.atoms`)."""
    return [structure_checks(pool.atoms(i)) for i in range(len(pool))]


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two 1-D samples (NaN if either is empty)."""
    from scipy.stats import wasserstein_distance

    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(wasserstein_distance(a, b))


def pool_metrics(pool: Table, n_sampled: int, reference: list[Checks]) -> dict[str, float]:
    """Rates (of ``n_sampled``) and distributions of a sampled pool against ``reference``
    checks: decoded, stated symmetry found, valid; Wasserstein distances of density
    (g/cm^3) and primitive atom count between the valid samples and the reference."""
    checks = pool_checks(pool)
    spg = np.asarray(pool["spg"]) if len(pool) else np.zeros(0)
    stated = sum(c.spg_found == int(s) for c, s in zip(checks, spg))
    valid = [c for c in checks if c.valid]
    return {
        "n": n_sampled,
        "decoded": len(pool) / n_sampled,
        "stated_spg": stated / n_sampled,
        "valid": len(valid) / n_sampled,
        "w_density": wasserstein(np.array([c.density_g_cm3 for c in valid]),
                                 np.array([c.density_g_cm3 for c in reference])),
        "w_n_atoms": wasserstein(np.array([c.n_primitive for c in valid], float),
                                 np.array([c.n_primitive for c in reference], float)),
    }


def reconstruction(gen, table: Table) -> dict[str, float]:
    """Match rate and mean normalised RMS distance (matches only) of the rows of
    ``table`` encoded and decoded by the conditional (C)VAE ``gen``, each under its own
    condition (:class:`~hpcxtal.generate.sample.Generator`)."""
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from hpcxtal.crystal.row import to_structure
    from hpcxtal.generate.sample import decode_values

    if not gen.conditional:
        raise ValueError(f"{gen.path}: reconstruction needs a conditional autoencoder")
    spg = torch.as_tensor(np.asarray(table["spg"], dtype=np.int64))
    wps = torch.as_tensor(np.asarray(table["wps"], dtype=np.int64))
    with torch.no_grad():
        values = gen.decode(gen.encode(table), spg, wps).double().numpy()
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    rms = []
    for i, row in enumerate(decode_values(spg.numpy(), wps.numpy(), values)):
        if isinstance(row, str):
            continue
        found = matcher.get_rms_dist(to_structure(table.row(i)), to_structure(row))
        if found is not None:
            rms.append(found[0])
    return {"n": len(table), "match_rate": len(rms) / max(len(table), 1),
            "rms": float(np.mean(rms)) if rms else float("nan")}
