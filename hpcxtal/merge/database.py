"""The campaign database: every relaxed shard merged into ONE ranked HDF5 table.

:func:`build_database` takes the verified relax outputs (tables with the refine,
topology and relax columns), joins them, re-validates every converged relaxed structure
(:mod:`hpcxtal.screen.validate`: the target's coordination rule, topology key and
dimensionality recomputed on the relaxed structure, known phases), de-duplicates a
second time across all shards (pymatgen's StructureMatcher within buckets of the
*relaxed* topology key and atoms per primitive cell), classes every row and records
overlap with the training structures. Rows are sorted by energy above graphite (NaN
last, ties by id), so the result does not depend on how rows were split into shards or
in which order files are given.

Columns of a database (one entry per row; every row of every relax output is kept,
so the campaign's accounting can be read from this file alone):

=====================  ========  ======================================================
``id`` ...             row       ``id spg wps cell xyz origin``: the refined row
``round``              int8      refinement round the row was last refined in (0: never)
``valid``              bool      CN-valid after refinement (True where never refined)
``spg_refined``        int16     spglib space group of the refined row (0: none)
``valid_xtal``         bool      ``spg_refined == spg``: the row has its stated group
``topology``           str       topology key before relaxation ("" where none)
``dimension``          int8      periodicity of that net (-1: none)
``n_prim``             int32     atoms per primitive cell of that net (0: none)
``energy``             float64   eV/atom of the relaxed structure (NaN: not relaxed),
                                 from the best tier the row reached (``tier``)
``e_rel``              float64   eV/atom above graphite relaxed the same way (same model)
``status``             str       that tier's relax outcome: converged / not_converged /
                                 failed / skipped
``status_reason``      str       why a row failed or was skipped ("" otherwise)
``relax_steps``        int32     optimiser steps
``tier``               str       ``screen`` (the relax stage's model, attributes
                                 ``model_*``) or ``rescore`` (the rescoring model,
                                 ``rescore_model_*``): the model of the row's energy,
                                 ``e_rel``, relaxed structure and so its class
``energy_screen``      float64   the screen's energy and e_rel (every relaxed row)
``e_rel_screen``       float64
``energy_rescore``     float64   the rescoring model's (NaN where not rescored)
``e_rel_rescore``      float64
``status_rescore``     str       rescore outcome (skipped where not rescored) and why
``status_reason_rescore`` str
``energy_initial``     float64   eV/atom of the structure before relaxation (screen)
``energy_change``      float64   ``energy_screen - energy_initial`` (eV/atom)
``rms_displacement_A`` float64   RMS atomic displacement on the screen's relaxation (Å)
``volume_change``      float64   relative volume change on the screen's relaxation
``relaxed_match``      bool      StructureMatcher still matches refined and relaxed
``topology_relaxed``   str       topology key of the relaxed structure ("": none)
``dimension_relaxed``  int8      its periodicity (-1: none)
``n_prim_relaxed``     int32     its atoms per primitive cell (0: none)
``motif_kept``         bool      the relaxed structure keeps the target's coordination
                                 rule (False where not relaxed; why not: ``class_reason``)
``valid_relaxed``      bool      CN-valid after refinement and the relaxed structure
                                 standing for it (its own or its representative's)
                                 keeps the rule
``known_phase``        str       name of the known phase the relaxed structure matches
``spg_relaxed``        int16     space group of the relaxed structure (spglib; 0: none)
``wyckoff_relaxed``    str       its occupied Wyckoff positions, e.g. "4e 8f 1a*3"
``duplicate_of``       uint64    final representative (topology or structure duplicate),
                                 own id for representatives and rows that are no candidate
``class``              str       a :class:`~hpcxtal.screen.validate.RowClass`: new, known,
                                 motif_lost, low_dimensional, duplicate, invalid, failed
``class_reason``       str       why, for people ("" for new)
``unique``             bool      own representative, 3-D, motif kept (class new, or known
                                 and 3-D with the motif): the headline's unique rows
``low_energy``         bool      unique and e_rel <= the low-energy window
``cubic``              bool      unique and ``spg_relaxed`` >= 195
``training_match``     str       origin of the training structure of the same relaxed key
                                 that the relaxed structure matches ("")
``in_training``        bool      unique and ``training_match``
=====================  ========  ======================================================

Relaxed structures (the best tier's; natoms 0 where a row was not relaxed) are the table's ragged
``structures``; the quarantine holds ``id origin reason`` of every sampled row that
never decoded, so ``rows + quarantined = sampled``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from hpcxtal.relax.status import RelaxStatus
from hpcxtal.store.hdf5 import StoreError, file_summary, read_table
from hpcxtal.store.table import ROW_COLUMNS, Structures, Table, str_array

if TYPE_CHECKING:
    from hpcxtal.descriptor.target import Target
    from hpcxtal.topology.annotate import SignatureParams

log = logging.getLogger(__name__)

KIND = "database"
#: Columns a relax (or rescore) output must have for a merge.
REQUIRED = tuple(ROW_COLUMNS) + ("energy", "e_rel", "status", "status_reason")
#: Graphite references every input must share: the screen's, the rescoring model's.
REFERENCES = ("e_graphite_eV_per_atom", "rescore_e_graphite_eV_per_atom")
#: Space groups from here up are cubic.
FIRST_CUBIC_SPG = 195


@dataclass(frozen=True, kw_only=True)
class MergeConfig:
    """Second de-duplication, symmetry and training-overlap settings of the merge stage.

    ``stol``, ``ltol``, ``angle_tol_deg``: pymatgen StructureMatcher tolerances (site,
    lattice fractions; degrees). ``symprec_A``: spglib tolerance for the space group of
    relaxed structures. ``training``: structures the generator was trained on ('sacada'
    for the bundled set, an hpcxtal .h5 table with structures, or null for none).
    ``low_energy_window_eV``: eV/atom above graphite that counts as low energy (null:
    the window recorded by the relax stage).
    """

    stol: float = 0.3
    ltol: float = 0.2
    angle_tol_deg: float = 5.0
    symprec_A: float = 0.1
    training: str | None = "sacada"
    low_energy_window_eV: float | None = None

    def __post_init__(self) -> None:
        for name in ("stol", "ltol", "angle_tol_deg", "symprec_A"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.low_energy_window_eV is not None and self.low_energy_window_eV < 0:
            raise ValueError("low_energy_window_eV must not be negative (or null)")

    def matcher(self):
        """The StructureMatcher with these tolerances."""
        from pymatgen.analysis.structure_matcher import StructureMatcher

        return StructureMatcher(ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol_deg)



def read_relax_outputs(paths: Sequence[Path]) -> list[tuple[Table, Table | None]]:
    """Read and verify every relax output; raise :class:`StoreError` naming the file
    that is missing, corrupted, not a relax output, or made with another energy
    reference than the first."""
    out = []
    reference: tuple[Path, float] | None = None
    for path in paths:
        table, quarantine = read_table(path)  # verifies row count and checksum
        missing = [c for c in REQUIRED if c not in table]
        if missing or table.structures is None:
            raise StoreError(f"{path}: not a relax output (missing {missing or ['structures']}); "
                             "run 'hpcxtal relax' on it first")
        e_ref = tuple(float(table.attrs.get(k, np.nan)) for k in REFERENCES)
        if reference is None:
            reference = (Path(path), e_ref)
        elif not np.allclose(e_ref, reference[1], rtol=0, atol=1e-9, equal_nan=True):
            raise StoreError(f"{path}: graphite reference {_eV(e_ref)} eV/atom differs from "
                             f"{_eV(reference[1])} in {reference[0]}; energies of different "
                             "models cannot be ranked together")
        out.append((table, quarantine))
    return out


def _eV(values: tuple[float, ...]) -> str:
    """Graphite references (screen, rescore) in words."""
    return " / ".join(f"{v:.6f}" for v in values if not np.isnan(v))


def _column(table: Table, name: str, default: object, dtype: str) -> np.ndarray:
    if name in table:
        col = table[name]
        return col if dtype == "str" else np.asarray(col, dtype=dtype)
    if dtype == "str":
        return str_array([default] * len(table))
    return np.full(len(table), default, dtype=dtype)


def _base_columns(table: Table) -> dict[str, np.ndarray]:
    """The columns a database keeps from a relax output, with defaults for stages that
    did not run (no refine: round 0, valid; no topology: no key)."""
    cols = {name: table[name] for name in ROW_COLUMNS}
    cols.update(
        round=_column(table, "round", 0, "int8"),
        valid=_column(table, "valid", True, "bool"),
        topology=_column(table, "topology", "", "str"),
        dimension=_column(table, "dimension", -1, "int8"),
        n_prim=_column(table, "n_prim", 0, "int32"),
        energy=np.asarray(table["energy"], dtype=np.float64),
        e_rel=np.asarray(table["e_rel"], dtype=np.float64),
        tier=_column(table, "tier", "screen", "str"),
        energy_screen=_column(table, "energy_screen", np.nan, "float64") if "tier" in table
        else np.asarray(table["energy"], dtype=np.float64),
        e_rel_screen=_column(table, "e_rel_screen", np.nan, "float64") if "tier" in table
        else np.asarray(table["e_rel"], dtype=np.float64),
        energy_rescore=_column(table, "energy_rescore", np.nan, "float64"),
        e_rel_rescore=_column(table, "e_rel_rescore", np.nan, "float64"),
        status_rescore=_column(table, "status_rescore", RelaxStatus.SKIPPED.value, "str"),
        status_reason_rescore=_column(table, "status_reason_rescore", "no rescore stage", "str"),
        status=table["status"],
        status_reason=table["status_reason"],
        relax_steps=_column(table, "relax_steps", 0, "int32"),
        energy_initial=_column(table, "energy_initial", np.nan, "float64"),
        rms_displacement_A=_column(table, "rms_displacement_A", np.nan, "float64"),
        volume_change=_column(table, "volume_change", np.nan, "float64"),
        duplicate_of=np.asarray(table["duplicate_of"] if "duplicate_of" in table else table["id"],
                                dtype=np.uint64).copy(),
    )
    return cols


def quarantine_ids(quarantine: Table | None) -> Table:
    """``id origin reason`` of quarantined rows (an empty table for None)."""
    if quarantine is None or len(quarantine) == 0:
        return Table({"id": np.zeros(0, np.uint64), "origin": str_array([]),
                      "reason": str_array([])})
    return Table({"id": np.asarray(quarantine["id"], np.uint64), "origin": quarantine["origin"],
                  "reason": _column(quarantine, "reason", "", "str")})


def relaxed_symmetry(structures: Structures, symprec: float) -> tuple[np.ndarray, np.ndarray]:
    """(space group, Wyckoff positions like "4e 8f 1a*3") of every non-empty structure by
    spglib at ``symprec`` Å; 0 and "" where empty or where spglib finds nothing."""
    import spglib

    n = len(structures)
    spg = np.zeros(n, dtype=np.int16)
    sites = [""] * n
    off = structures.offsets
    for i in range(n):
        lo, hi = off[i], off[i + 1]
        if hi == lo or not np.isfinite(structures.lattice[i]).all():
            continue
        cell = (structures.lattice[i], structures.frac[lo:hi], structures.numbers[lo:hi])
        try:
            data = spglib.get_symmetry_dataset(cell, symprec=symprec)
        except (spglib.SpglibError, ValueError):
            data = None
        if data is None:
            continue
        spg[i] = data.number
        counts: dict[str, int] = {}
        for orbit, letter in zip(data.crystallographic_orbits, data.wyckoffs):
            counts.setdefault(f"{letter}:{orbit}", 0)
            counts[f"{letter}:{orbit}"] += 1
        # multiplicity in the conventional cell = orbit size x conventional/input ratio
        scale = len(data.std_types) / (hi - lo)
        labels: dict[str, int] = {}
        for k, v in counts.items():
            label = f"{round(v * scale)}{k.split(':')[0]}"
            labels[label] = labels.get(label, 0) + 1
        sites[i] = " ".join(label if n == 1 else f"{label}*{n}"
                            for label, n in sorted(labels.items(), key=lambda x: x[0][-1]))
    return spg, str_array(sites)


def to_pymatgen(structures: Structures, i: int):
    """Structure ``i`` as a pymatgen Structure."""
    from pymatgen.core import Lattice, Structure

    off = structures.offsets
    lo, hi = off[i], off[i + 1]
    return Structure(Lattice(structures.lattice[i]), structures.numbers[lo:hi].tolist(),
                     structures.frac[lo:hi])


def second_duplicates(ids: np.ndarray, keys: np.ndarray, e_rel: np.ndarray,
                      candidates: np.ndarray, structures: Structures, cfg: MergeConfig
                      ) -> np.ndarray:
    """``duplicate_of`` after relaxation: within each bucket ``keys`` (the relaxed
    topology key and atoms per primitive cell), the ``candidates`` (row indices) are
    taken by increasing (energy above graphite, id: rows of two tiers compare by
    their own model's reference); each is compared with the representatives kept so
    far and becomes a duplicate of the first that matches, else a representative. Other
    rows keep their own id."""
    out = np.asarray(ids, dtype=np.uint64).copy()
    matcher = cfg.matcher()
    buckets: dict[str, list[int]] = {}
    for i in candidates:
        if keys[i]:
            buckets.setdefault(str(keys[i]), []).append(int(i))
    for key in sorted(buckets):
        rows = sorted(buckets[key], key=lambda i: (e_rel[i], int(ids[i])))
        reps: list[tuple[int, object]] = []
        for i in rows:
            s = to_pymatgen(structures, i)
            match = next((r for r, rs in reps if matcher.fit(rs, s)), None)
            if match is None:
                reps.append((i, s))
            else:
                out[i] = ids[match]
    return out


def training_overlap(keys: np.ndarray, rows: Iterable[int], structures: Structures,
                     training: dict[str, list], cfg: MergeConfig) -> list[str]:
    """For each row index in ``rows`` (others ""): the origin of the first training
    structure of the same topology key that matches its structure, else ""."""
    matcher = cfg.matcher()
    out = [""] * len(keys)
    for i in rows:
        for origin, ref in training.get(str(keys[i]), []):
            if matcher.fit(ref, to_pymatgen(structures, i)):
                out[i] = origin
                break
    return out


def _resolve(ids: np.ndarray, dup: np.ndarray) -> np.ndarray:
    """Follow duplicate chains to their end (ids not in the table end a chain)."""
    where = {int(v): k for k, v in enumerate(ids)}
    out = dup.copy()
    for k in range(len(out)):
        seen = {int(ids[k])}
        target = int(out[k])
        while target in where and target not in seen:
            seen.add(target)
            nxt = int(dup[where[target]])
            if nxt == target:
                break
            target = nxt
        out[k] = target
    return out


def rank_order(e_rel: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Stable ranking: by e_rel, NaN last, ties by id."""
    e = np.asarray(e_rel, dtype=np.float64)
    return np.lexsort((np.asarray(ids, np.uint64), np.where(np.isnan(e), 0.0, e), np.isnan(e)))


def _refined(table: Table, i: int):
    """Row ``i`` expanded to ASE Atoms (empty Atoms where the row has no sites)."""
    from ase import Atoms

    from hpcxtal.crystal.row import to_atoms

    row = table.row(i)
    return to_atoms(row) if (row.wps >= 0).any() else Atoms(pbc=True)


def refined_symmetry(table: Table, symprec: float) -> np.ndarray:
    """spglib space group of every row expanded to its conventional cell (0: none)."""
    images = [_refined(table, i) for i in range(len(table))]
    return relaxed_symmetry(Structures.from_atoms(images), symprec)[0]


def relaxed_matches(table: Table, rows: np.ndarray, cfg: MergeConfig) -> np.ndarray:
    """Whether StructureMatcher matches each of ``rows``' refined row (expanded) with its
    relaxed structure; False for other rows and rows without sites."""
    from pymatgen.io.ase import AseAtomsAdaptor

    matcher = cfg.matcher()
    out = np.zeros(len(table), dtype=bool)
    for i in rows:
        refined = _refined(table, int(i))
        if len(refined):
            out[i] = matcher.fit(AseAtomsAdaptor.get_structure(refined),
                                 to_pymatgen(table.structures, int(i)))
    return out


def build_database(inputs: Sequence[tuple[Table, Table | None]], cfg: MergeConfig,
                   training: dict[str, list] | None = None, window_eV: float = 0.55,
                   pool_quarantine: Table | None = None, *, target: Target | None = None,
                   params: SignatureParams | None = None,
                   known: dict[str, list] | None = None, workers: int | None = None
                   ) -> tuple[Table, Table]:
    """(database, quarantine) from verified relax outputs. ``training`` and ``known``
    map a topology key to (origin or name, pymatgen Structure) pairs; ``target`` (a
    :class:`~hpcxtal.descriptor.target.Target`, default graphite) gives the coordination
    rule relaxed structures must keep; ``params`` the signature settings (default
    :class:`~hpcxtal.topology.annotate.SignatureParams`). ``pool_quarantine`` (the
    pool's undecodable rows) replaces the inputs' own quarantines where given."""
    from hpcxtal.descriptor.target import DEFAULT_TARGET, load_targets
    from hpcxtal.screen.validate import check_relaxed, classify, RowClass
    from hpcxtal.topology.annotate import SignatureParams

    if not inputs:
        raise ValueError("nothing to merge: no relax outputs")
    parts = [Table(_base_columns(t), t.structures) for t, _ in inputs]
    table = Table.concat(parts)
    ids = table["id"]
    if len(np.unique(ids)) != len(ids):
        values, counts = np.unique(ids, return_counts=True)
        raise StoreError(f"ids occur in more than one row of the inputs: "
                         f"{values[counts > 1][:10].tolist()}; a shard was given twice?")
    status = table["status"]
    s = table.structures
    converged = np.flatnonzero((status == RelaxStatus.CONVERGED) & (s.natoms > 0)
                               & np.isfinite(table["energy"]))
    target = target or load_targets()[DEFAULT_TARGET]
    checks = check_relaxed(s, converged, target, params or SignatureParams(), known or {},
                           cfg.matcher(), workers, cfg.symprec_A)
    keyed = converged[checks.topology[converged] != ""]
    buckets = str_array(f"{k}:{n}" if k else "" for k, n in zip(checks.topology, checks.n_prim))
    topo_dup = np.asarray(table["duplicate_of"], np.uint64)
    second = second_duplicates(ids, buckets, table["e_rel"], keyed, s, cfg)
    dup = _resolve(ids, np.where(second != ids, second, topo_dup))
    classes, reasons = classify(ids=ids, valid=table["valid"], dimension_refined=table["dimension"],
                                first_duplicate_of=topo_dup, status=status,
                                status_reason=table["status_reason"], duplicate_of=dup,
                                checks=checks)
    motif_kept = np.zeros(len(table), dtype=bool)
    motif_kept[converged] = [not checks.motif_reason[i] for i in converged]
    three_d = checks.dimension == 3
    unique = (classes == RowClass.NEW) | ((classes == RowClass.KNOWN) & motif_kept & three_d)
    where = {int(v): k for k, v in enumerate(ids)}
    stands_for = np.array([where.get(int(d), k) for k, d in enumerate(dup)])
    spg_relaxed, wyckoff_relaxed = relaxed_symmetry(s, cfg.symprec_A)
    spg_refined = refined_symmetry(table, cfg.symprec_A)
    match = training_overlap(checks.topology, keyed, s, training or {}, cfg)
    table.columns.update(
        spg_refined=spg_refined, valid_xtal=spg_refined == table["spg"],
        energy_change=table["energy_screen"] - table["energy_initial"],
        relaxed_match=relaxed_matches(table, converged, cfg),
        topology_relaxed=checks.topology, dimension_relaxed=checks.dimension,
        n_prim_relaxed=checks.n_prim, motif_kept=motif_kept,
        valid_relaxed=np.asarray(table["valid"], bool) & motif_kept[stands_for],
        known_phase=checks.known_phase, spg_relaxed=spg_relaxed,
        wyckoff_relaxed=wyckoff_relaxed, duplicate_of=dup, **{"class": classes},
        class_reason=reasons, unique=unique, low_energy=unique & (table["e_rel"] <= window_eV),
        cubic=unique & (spg_relaxed >= FIRST_CUBIC_SPG), training_match=str_array(match),
        in_training=unique & np.array([bool(m) for m in match], dtype=bool))
    order = rank_order(table["e_rel"], ids)
    if pool_quarantine is not None:
        quarantine = quarantine_ids(pool_quarantine)
    else:
        quarantine = Table.concat([quarantine_ids(q) for _, q in inputs])
    quarantine = quarantine.take(np.argsort(quarantine["id"], kind="stable"))
    return table.take(order), quarantine


def read_database(path: str | Path) -> tuple[Table, Table]:
    """A database and its quarantine, verified; :class:`StoreError` if ``path`` is not one."""
    table, quarantine = read_table(path)
    if file_summary(path)["attrs"].get("kind") != KIND or "unique" not in table:
        raise StoreError(f"{path}: not an hpcxtal database (make one with 'hpcxtal merge')")
    return table, quarantine_ids(quarantine)


def query(table: Table, top: int | None = None, max_e_rel: float | None = None,
          spg: int | None = None, dimension: int | None = None, min_atoms: int | None = None,
          max_atoms: int | None = None, unique_only: bool = False,
          row_class: str | None = None) -> np.ndarray:
    """Row indices of a database that pass every given filter, in rank order, at most
    ``top``. ``spg`` and ``dimension`` filter on the relaxed structure; atoms count the
    relaxed cell; ``row_class`` is a value of the ``class`` column."""
    keep = np.ones(len(table), dtype=bool)
    natoms = table.structures.natoms if table.structures is not None else np.zeros(len(table))
    if max_e_rel is not None:
        keep &= table["e_rel"] <= max_e_rel  # NaN never passes
    if spg is not None:
        keep &= table["spg_relaxed"] == spg
    if dimension is not None:
        keep &= table["dimension_relaxed"] == dimension
    if min_atoms is not None:
        keep &= natoms >= min_atoms
    if max_atoms is not None:
        keep &= natoms <= max_atoms
    if unique_only:
        keep &= table["unique"]
    if row_class is not None:
        keep &= table["class"] == row_class
    idx = np.flatnonzero(keep)
    return idx if top is None else idx[:top]
