"""Reference task (a): recover known structures from their distance matrix.

For each known structure (``source``: the bundled SACADA carbon rows, the binary and
ternary prototypes of :mod:`hpcxtal.data.prototypes`, or a table file; up to
``max_atoms`` atoms), given its space group, Wyckoff layout with the element of each
site (so the stoichiometry) and a target distance matrix (exact, or with Gaussian noise
of ``noise_rmse_A``, the error size of AlphaCrystal-II's predictor), two methods search
for the structure in the same run:

- **refine**: ``starts`` random crystals of that symmetry (pyxtal ``from_random`` with
  the same Wyckoff labels, each label's element as in the structure) refined at once
  by batched gradient descent on the ``distance_matrix`` objective (the refine stage's
  loop: restarts, step control, bounds); the lowest-loss row is the answer. Evaluations = loss + gradient
  evaluations (each row's steps plus the one it stops at).
- **random**: random search, pyxtal random crystals of the same symmetry ranked by
  distance-matrix RMSE, as many as refine spent evaluations on that structure (and
  target); the lowest-RMSE crystal is the answer.

Both methods first scale every crystal's lattice by the least-squares factor that best
fits its sorted distances to the target's (:func:`fit_scale`; one closed-form step,
not counted as an evaluation).

Figures per structure and method: match (pymatgen ``StructureMatcher`` with its default
tolerances: ltol 0.2, stol 0.3, angle_tol 5), RMSD (``get_rms_dist``: RMS displacement
normalised by (V/n)^(1/3), matched rows only), DM RMSE and distance-map overlap of the
answer against the exact matrix (sorted, :mod:`hpcxtal.refine.distance`), evaluations
and wall time. The noisy target is the exact atom-ordered matrix plus symmetric
N(0, sigma^2) noise on every pair (clipped at 0.1 Å), sorted. Every list is
element-resolved (sorted by (element, element) pair class, then by distance; one class
for carbon), and so is the objective, which is given each atom's element.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcxtal.config import from_mapping, load_yaml
from hpcxtal.refine.config import ObjectiveTerm, OptimConfig, RefineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DMReconstructionConfig:
    """The benchmark's config file (lengths in Å)."""

    source: str = "sacada"  # "sacada", "prototypes" or an hpcxtal table file
    max_atoms: int = 24  # structures with at most this many atoms in the cell ...
    n_structures: int = 20  # ... the first this many by id
    noise_rmse_A: list[float] = field(default_factory=lambda: [0.0, 0.5])
    starts: int = 6  # random starts refined per structure and target
    valid_rmse_A: float = 0.05  # a row is valid (stops once flat) below this DM RMSE; a
    # noisy target is never met that closely, so its starts use all steps and restarts
    overlap_tolerance_A: float = 0.1  # distance-map overlap: entries within this agree
    seed: int = 0
    refine: RefineConfig = field(default_factory=lambda: RefineConfig(
        max_steps=200, restarts=4, optim=OptimConfig(lr=0.03, patience=10)))

    def __post_init__(self) -> None:
        if self.max_atoms < 2 or self.n_structures < 1 or self.starts < 1:
            raise ValueError("max_atoms must be at least 2, n_structures and starts at least 1")
        if not self.noise_rmse_A or any(not 0 <= s <= 3 for s in self.noise_rmse_A):
            raise ValueError("noise_rmse_A: give one or more noise levels within 0-3 Å")
        if self.valid_rmse_A <= 0 or self.overlap_tolerance_A <= 0:
            raise ValueError("valid_rmse_A and overlap_tolerance_A must be positive")


def load_config(path: str | Path) -> DMReconstructionConfig:
    """The benchmark config in a YAML file (ConfigError names the key and the fix)."""
    return from_mapping(DMReconstructionConfig, load_yaml(path), str(path))


def ordered_distances(structure) -> np.ndarray:
    """(N, N) minimum-image distance matrix of a pymatgen structure."""
    return np.asarray(structure.distance_matrix)


def noisy_matrix(dm: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``dm`` plus symmetric N(0, sigma^2) noise off the diagonal, clipped at 0.1 Å."""
    if sigma == 0:
        return dm
    noise = np.triu(rng.normal(0.0, sigma, dm.shape), 1)
    return np.where(np.eye(len(dm), dtype=bool), 0.0, np.clip(dm + noise + noise.T, 0.1, None))


def sorted_entries(structure) -> np.ndarray:
    """Off-diagonal entries of a pymatgen structure's distance matrix, sorted by pair
    class of its elements, then by distance (:func:`~hpcxtal.refine.distance.class_sorted`)."""
    from hpcxtal.refine.distance import class_sorted

    return class_sorted(ordered_distances(structure), np.array(structure.atomic_numbers))


def fit_scale(structure, target: np.ndarray):
    """``structure`` with its lattice scaled by the least-squares factor
    ``s = <d, t> / <d, d>`` of its sorted distances d against the sorted target t (all
    distances scale with the cell): the size the target asks for, at no search cost."""
    d = sorted_entries(structure)
    scaled = structure.copy()
    scaled.scale_lattice(structure.volume * float(d @ target / (d @ d)) ** 3)
    return scaled


def random_crystal(spg: int, sites: dict[str, list[str]], seed: list[int]):
    """A pyxtal random crystal of space group ``spg`` with the Wyckoff sites ``sites``
    (element -> its site labels), seeded by ``seed`` (None when pyxtal cannot place the
    atoms)."""
    from pyxtal import pyxtal

    from hpcxtal.crystal.symmetry import space_group

    group = space_group(spg)
    size = {wp.label: wp.multiplicity for wp in group.wyckoff}
    elements = list(sites)
    xtal = pyxtal()
    state = int(np.random.default_rng(seed).integers(2**31))
    try:
        xtal.from_random(3, spg, elements, [sum(size[x] for x in sites[e]) for e in elements],
                         sites=[sites[e] for e in elements], random_state=state)
    except Exception:  # noqa: BLE001  (pyxtal raises many kinds when placement fails)
        return None
    return xtal if xtal.valid else None


def known_structures(cfg: DMReconstructionConfig):
    """The source's table (:attr:`DMReconstructionConfig.source`)."""
    from hpcxtal.data import resolve_input
    from hpcxtal.data.prototypes import SOURCE, prototype_table
    from hpcxtal.store.hdf5 import read_table

    return prototype_table() if cfg.source == SOURCE else read_table(resolve_input(cfg.source))[0]


def _judge(truth, answer, exact: np.ndarray, tol: float) -> dict:
    """Match, RMSD, DM RMSE and overlap of ``answer`` against ``truth``."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    matched = bool(matcher.fit(truth, answer))
    rms = matcher.get_rms_dist(truth, answer) if matched else None
    d = sorted_entries(answer)
    return {"match": matched, "rmsd": None if rms is None else float(rms[0]),
            "dm_rmse_A": float(np.sqrt(np.mean((d - exact) ** 2))),
            "dm_overlap": float(np.mean(np.abs(d - exact) < tol))}


def _refine(row_table, target: np.ndarray, elements: list[str], cfg: DMReconstructionConfig,
            workdir: Path):
    """Refine the start rows toward the (N, N) matrix ``target`` of atoms of
    ``elements``; (result, answer row index, evaluations)."""
    from hpcxtal.refine.represent import refine_table

    path = workdir / "target.txt"
    np.savetxt(path, target)
    term = ObjectiveTerm(name="distance_matrix",
                         settings={"distances": str(path), "elements": elements,
                                   "valid_rmse_A": cfg.valid_rmse_A})
    refine_cfg = dataclasses.replace(cfg.refine, objective=[term], seed=cfg.seed, device="cpu")
    result = refine_table(row_table, refine_cfg)
    best = int(np.nanargmin(result.loss))
    return result, best, int((result.steps + 1).sum())  # every row's loss is evaluated
    # once more than it steps (the evaluation it stops at)


def run(cfg: DMReconstructionConfig, progress=None) -> dict:
    """Run the benchmark; returns per-structure records and a summary per noise level
    and method (match rate, mean RMSD of matches, median time, evaluations)."""
    from hpcxtal.crystal.freevars import row_layout
    from hpcxtal.crystal.row import Row, from_pyxtal, to_structure
    from hpcxtal.crystal.symmetry import space_group
    from hpcxtal.refine.distance import class_sorted
    from hpcxtal.refine.represent import use_threads
    from hpcxtal.store.table import Table, str_array

    use_threads(cfg.refine)
    table = known_structures(cfg)
    order = np.argsort(table["id"], kind="stable")
    chosen = [k for k in order
              if row_layout(int(table["spg"][k]), table["wps"][k]).n_atoms <= cfg.max_atoms]
    chosen = chosen[:cfg.n_structures]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_done, k in enumerate(chosen):
            truth_row = table.row(k)
            truth = to_structure(truth_row)
            exact_dm = ordered_distances(truth)
            exact = sorted_entries(truth)
            elements = [str(e) for e in truth.species]
            group = space_group(truth_row.spg)
            sites: dict[str, list[str]] = {}
            for w, el in zip(truth_row.wps[truth_row.wps >= 0], truth_row.elements()):
                sites.setdefault(el, []).append(group.wyckoff[w].label)
            sid = int(table["id"][k])
            n_atoms = truth_row.n_atoms()
            starts = [x for x in (random_crystal(truth_row.spg, sites, [cfg.seed, sid, 0, j])
                                  for j in range(cfg.starts)) if x is not None]
            if not starts:
                log.warning("structure %d: pyxtal placed no random start; left out", sid)
                continue
            start_pymatgen = [x.to_pymatgen() for x in starts]
            start_rows = [from_pyxtal(x) for x in starts]
            pool: list = []  # the random search's crystals, attempt j seeded by j: every
            # target of this structure ranks the same first crystals

            def attempt(n: int) -> tuple[list, float]:
                """The first ``n`` attempts and the seconds generating them took."""
                for j in range(len(pool), n):
                    t0 = time.perf_counter()
                    xtal = random_crystal(truth_row.spg, sites, [cfg.seed, sid, 1, j])
                    pool.append((None if xtal is None else xtal.to_pymatgen(),
                                 time.perf_counter() - t0))
                return [x for x, _ in pool[:n]], sum(t for _, t in pool[:n])

            for sigma in cfg.noise_rmse_A:
                rng = np.random.default_rng([cfg.seed, sid, int(round(1000 * sigma))])
                noisy = noisy_matrix(exact_dm, sigma, rng)
                target = class_sorted(noisy, np.array(truth.atomic_numbers))
                t0 = time.perf_counter()
                cells = np.array([r.cell for r in start_rows])
                for j, start in enumerate(start_pymatgen):
                    cells[j, :3] *= (fit_scale(start, target).volume / start.volume) ** (1 / 3)
                start_table = Table({
                    "id": np.arange(len(start_rows), dtype=np.uint64) + 1000 * sid,
                    "spg": np.array([r.spg for r in start_rows]),
                    "wps": np.array([r.wps for r in start_rows]),
                    "cell": cells, "xyz": np.array([r.xyz for r in start_rows]),
                    "species": np.array([r.species for r in start_rows]),
                    "origin": str_array(["pyxtal"] * len(start_rows))})
                result, best, evaluations = _refine(start_table, noisy, elements, cfg, Path(tmp))
                t_refine = time.perf_counter() - t0
                answer = to_structure(Row(truth_row.spg, result.cell[best], start_rows[best].wps,
                                          result.xyz[best], species=start_rows[best].species))
                rec = {"id": sid, "formula": truth.composition.reduced_formula,
                       "spg": truth_row.spg, "n_atoms": n_atoms,
                       "n_free": row_layout(truth_row.spg, truth_row.wps).n_free,
                       "noise_rmse_A": sigma,
                       "target_rmse_A": float(np.sqrt(np.mean((target - exact) ** 2))),
                       "starts": len(start_rows)}
                rec["refine"] = {**_judge(truth, answer, exact, cfg.overlap_tolerance_A),
                                 "loss": float(result.loss[best]), "evaluations": evaluations,
                                 "seconds": t_refine}
                tried, t_generate = attempt(evaluations)
                t0 = time.perf_counter()
                placed = [fit_scale(x, target) for x in tried if x is not None]
                scores = [np.sqrt(np.mean((sorted_entries(x) - target) ** 2)) for x in placed]
                t_random = t_generate + time.perf_counter() - t0
                extra = {"evaluations": len(tried), "placed": len(placed), "seconds": t_random}
                rec["random"] = ({**_judge(truth, placed[int(np.argmin(scores))], exact,
                                           cfg.overlap_tolerance_A), **extra}
                                 if placed else {"match": False, "rmsd": None, **extra})
                records.append(rec)
                log.info("structure %d (spg %d, %d atoms) noise %.2f: refine %s in %.1f s (%d "
                         "evaluations), random %s in %.1f s", sid, truth_row.spg, n_atoms, sigma,
                         rec["refine"]["match"], t_refine, evaluations, rec["random"]["match"],
                         t_random)
            if progress is not None:
                progress(n_done + 1, len(chosen))
    return {"config": dataclasses.asdict(cfg), "records": records, "summary": summarise(records)}


def summarise(records: list[dict]) -> dict:
    """Per noise level and method: structures, match rate, mean RMSD of matches, mean
    DM RMSE and overlap, median seconds and evaluations per structure."""
    out = {}
    for sigma in sorted({r["noise_rmse_A"] for r in records}):
        rows = [r for r in records if r["noise_rmse_A"] == sigma]
        per = {}
        for method in ("refine", "random"):
            res = [r[method] for r in rows]
            rmsd = [x["rmsd"] for x in res if x.get("rmsd") is not None]
            per[method] = {
                "structures": len(res),
                "match_rate": float(np.mean([x["match"] for x in res])),
                "mean_rmsd": float(np.mean(rmsd)) if rmsd else None,
                "mean_dm_rmse_A": float(np.nanmean([x.get("dm_rmse_A", np.nan) for x in res])),
                "mean_dm_overlap": float(np.nanmean([x.get("dm_overlap", np.nan) for x in res])),
                "median_seconds": float(np.median([x["seconds"] for x in res])),
                "median_evaluations": float(np.median([x["evaluations"] for x in res])),
            }
        out[f"{sigma:g}"] = per
    return out
