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

Coverage (:func:`coverage`), as CDVAE defines it (``scripts/compute_metrics.py`` and
``eval_utils.compute_cov`` of txie-93/cdvae): every structure gets a fingerprint, the mean
over its sites of matminer's ``CrystalNNFingerprint.from_preset("ops")`` (per
coordination number 1-24 the CrystalNN weight, then weight x each motif order parameter
of that CN: 61 numbers; :func:`structure_fingerprint`, our implementation with
pymatgen's ``CrystalNN`` and ``LocalStructOrderParams``, the motif parameters of
matminer's presets). COV-R: the fraction of reference structures with a generated one
within the structure cutoff (Euclidean fingerprint distance; CDVAE's carbon value 0.2)
and the composition cutoff; COV-P: the number of generated structures within the cutoffs
of some reference, divided by *all* samples drawn (undecoded ones count as misses, as
CDVAE's unconstructable crystals do). Differences from CDVAE: the site mean is taken
over symmetry-distinct sites weighted by multiplicity (spglib, 0.001 Å; equal sites have
equal fingerprints), and the composition criterion is "same reduced formula" instead of
a Magpie-fingerprint distance <= 4 (identical for one-element carbon, where every
composition distance is 0). :func:`overlap` counts the distinct structures two
sets share by pymatgen's StructureMatcher (default tolerances).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hpcxtal.store.table import Table

#: CDVAE's structure validity: the shortest interatomic distance must exceed this (Å).
MIN_DISTANCE_A = 0.5
#: g/cm^3 per (amu / Å^3).
AMU_PER_A3_IN_G_PER_CM3 = 1.66053907
#: CDVAE's COV structure-fingerprint cutoff for its carbon dataset (COV_Cutoffs["carbon"]).
COV_STRUCTURE_CUTOFF = 0.2

# matminer's "ops" CrystalNN fingerprint: per coordination number, the motifs whose
# order parameters follow the CN weight, as (pymatgen LocalStructOrderParams type,
# parameters or None for pymatgen's defaults); CNs 13-24 have the weight only.
_BENT = [{"TA": ta, "IGW_TA": igw} for ta, igw in
         ((0.5, 15.15), (0.5802777777777778, 13.95), (0.666666666667, 13.25),
          (0.833333333333333, 12.45), (1.0, 8.667))]
_MOTIFS: dict[int, list[tuple[str, dict | None]]] = {
    1: [("sgl_bd", None)],
    2: [("bent", p) for p in _BENT],
    3: [("tri_plan_max", None),
        ("tet_max", {"TA": 0.6081734479693927, "IGW_TA": 18.33, "fac_AA": 1.5, "exp_cos_AA": 2}),
        ("T", None)],
    4: [("sq_plan_max", None), ("tet_max", None), ("see_saw_rect", None),
        ("tri_bipyr", {"min_SPP": 2.356194490192345, "IGW_EP": 15.75, "IGW_SPP": 12.75,
                       "fac_AA": 1.5, "exp_cos_AA": 2, "w_SPP": 1}),
        ("tri_pyr", None)],
    5: [("pent_plan_max", None), ("sq_pyr", None), ("tri_bipyr", None)],
    6: [("hex_plan_max", None), ("oct_max", None), ("pent_pyr", None)],
    7: [("hex_pyr", None), ("pent_bipyr", None)],
    8: [("bcc", None), ("hex_bipyr", None)],
    **{cn: [("q2", None), ("q4", None), ("q6", None)] for cn in (9, 10, 11)},
    12: [("cuboct_max", None), ("q2", None), ("q4", None), ("q6", None)],
}
MAX_CN = 24
#: Length of a structure fingerprint (61).
FINGERPRINT_LENGTH = MAX_CN + sum(len(v) for v in _MOTIFS.values())


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


@lru_cache(maxsize=1)
def _order_parameters() -> dict[int, list]:
    """One pymatgen ``LocalStructOrderParams`` per motif of :data:`_MOTIFS`."""
    from pymatgen.analysis.local_env import LocalStructOrderParams

    return {cn: [LocalStructOrderParams([kind], parameters=[params]) for kind, params in motifs]
            for cn, motifs in _MOTIFS.items()}


def site_fingerprint(structure, index: int, nn) -> np.ndarray:
    """(61,) CrystalNN "ops" fingerprint of site ``index`` of a pymatgen ``structure``
    (``nn``: a pymatgen ``CrystalNN``)."""
    data = nn.get_nn_data(structure, index)
    ops = _order_parameters()
    out = []
    for cn in range(1, MAX_CN + 1):
        weight = data.cn_weights.get(cn, 0.0)
        out.append(weight)
        if cn not in ops:
            continue
        sites = [structure[index]] + [n["site"] for n in data.cn_nninfo.get(cn, [])]
        for op in ops[cn]:
            value = op.get_order_parameters(sites, 0, indices_neighs=list(range(1, len(sites))))[0] \
                if weight > 0 else 0.0
            out.append(weight * (value or 0.0))
    return np.asarray(out, dtype=float)


def structure_fingerprint(atoms) -> np.ndarray | None:
    """(61,) mean site fingerprint of ASE ``atoms`` (symmetry-distinct sites weighted by
    multiplicity); None where CrystalNN fails (CDVAE then drops the crystal)."""
    import spglib
    from pymatgen.analysis.local_env import CrystalNN
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = spglib.get_symmetry_dataset((atoms.cell.array, atoms.get_scaled_positions(),
                                            atoms.numbers), symprec=1e-3)
        classes = data.equivalent_atoms if data is not None else np.arange(len(atoms))
        reps, counts = np.unique(classes, return_counts=True)
        nn = CrystalNN()
        try:
            fps = np.array([site_fingerprint(structure, int(i), nn) for i in reps])
        except Exception:  # noqa: BLE001 - any CrystalNN failure, as CDVAE counts it
            return None
    return (fps * counts[:, None]).sum(0) / counts.sum()


def coverage(generated: list[np.ndarray | None], generated_formulas: list[str],
             reference: list[np.ndarray], reference_formulas: list[str], n_generated: int,
             cutoff: float = COV_STRUCTURE_CUTOFF) -> dict[str, float]:
    """CDVAE's COV-R and COV-P (and the mean nearest-fingerprint distances AMSD-R/P) of
    generated fingerprints (None: no structure or no fingerprint) against the reference
    ones; ``n_generated`` is the number of samples drawn (COV-P's denominator)."""
    from scipy.spatial.distance import cdist

    keep = [i for i, fp in enumerate(generated) if fp is not None]
    if not keep or not reference:
        return {"cov_r": 0.0, "cov_p": 0.0, "amsd_r": float("nan"), "amsd_p": float("nan")}
    dist = cdist(np.array([generated[i] for i in keep]), np.array(reference))
    same = np.array([[generated_formulas[i] == f for f in reference_formulas] for i in keep])
    close = (dist <= cutoff) & same
    return {"cov_r": float(close.any(0).mean()), "cov_p": float(close.any(1).sum() / n_generated),
            "amsd_r": float(dist.min(0).mean()), "amsd_p": float(dist.min(1).mean())}


def distinct(structures: list) -> list:
    """One representative per StructureMatcher group (pymatgen structures)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if not structures:
        return []
    return [group[0] for group in StructureMatcher().group_structures(structures)]


def overlap(a: list, b: list) -> int:
    """How many of the distinct structures ``a`` (pymatgen, from :func:`distinct`) match
    one of ``b`` (StructureMatcher, default tolerances)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    return sum(any(matcher.fit(x, y) for y in b) for x in a)
