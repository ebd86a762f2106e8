"""Training-set augmentation: many equivalent tabular rows of each known crystal.

One crystal has many rows: it can be described in any subgroup of its space group
(translationengleiche and klassengleiche, pyxtal's Wyckoff splitting), and within one
description every Wyckoff site can take any orbit member that lies on the position's
generator as its representative. A generative model trained on all of them learns the
crystals, not one arbitrary way of writing them down. Every row kept is decoded again
and compared with the source crystal (space group found by spglib, primitive atom
count, volume per atom, reduced primitive cell); rows that do not match are dropped.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from hpcxtal.crystal.row import N_SITES, DecodeError, Row, decode, from_pyxtal, to_atoms, to_pyxtal
from hpcxtal.crystal.symmetry import expand_site, space_group
from hpcxtal.config import to_mapping
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table, structure_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Limits and size knobs of the augmentation.

    ``max_reps`` subgroup descriptions per crystal (breadth-first down the subgroup
    tree to ``max_depth`` steps), ``n_choices`` generator choices per description.
    The defaults give a tiny set for tests; ``hpcxtal prepare --size full`` uses
    :data:`FULL`.
    """

    max_atoms: int = 500
    max_sites: int = N_SITES
    max_length_A: float = 50.0
    angle_range_deg: tuple[float, float] = (30.0, 150.0)
    max_reps: int = 4
    max_depth: int = 2
    max_cell: int = 4
    group_types: str = "tk"
    n_choices: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_sites <= N_SITES:
            raise ValueError(f"max_sites must be in 1-{N_SITES}, got {self.max_sites}")
        if self.max_reps < 1 or self.n_choices < 1 or self.max_depth < 0:
            raise ValueError("max_reps and n_choices must be >= 1, max_depth >= 0")
        if not set(self.group_types) <= {"t", "k"} or not self.group_types:
            raise ValueError(f"group_types must use 't' and/or 'k', got {self.group_types!r}")


#: Named sizes for ``hpcxtal prepare --size``.
SIZES = {
    "tiny": AugmentConfig(),
    "small": AugmentConfig(max_reps=4, max_depth=1, n_choices=12),
    "full": AugmentConfig(max_reps=8, max_depth=2, n_choices=32),
}


@dataclass(frozen=True)
class Fingerprint:
    """Cheap identity of a crystal: symmetry, primitive size and cell, density."""

    spg: int
    n_primitive: int
    volume_per_atom: float
    lengths: tuple[float, float, float]  # sorted Niggli-reduced primitive lengths, Å

    def matches(self, other: "Fingerprint", rtol: float = 2e-3) -> bool:
        return (self.spg == other.spg and self.n_primitive == other.n_primitive
                and abs(self.volume_per_atom - other.volume_per_atom) <= rtol * self.volume_per_atom
                and np.allclose(self.lengths, other.lengths, rtol=rtol))


def fingerprint(row: Row, symprec: float = 0.01) -> Fingerprint:
    """The :class:`Fingerprint` of the crystal a row describes (spglib analysis)."""
    import spglib

    atoms = to_atoms(row)
    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():  # spglib 2.x warns about its own error-handling switch
        warnings.simplefilter("ignore", DeprecationWarning)
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)
        prim = spglib.standardize_cell(cell, to_primitive=True, symprec=symprec)
        if data is None or prim is None:
            raise DecodeError("spglib could not analyse the structure")
        lattice = spglib.niggli_reduce(prim[0])
    lattice = prim[0] if lattice is None else lattice
    lengths = tuple(sorted(np.linalg.norm(lattice, axis=1).round(6)))
    volume = abs(np.linalg.det(prim[0])) / len(prim[2])
    return Fingerprint(int(data.number), len(prim[2]), float(volume), lengths)


def within_limits(row: Row, cfg: AugmentConfig) -> bool:
    """Whether a row respects the size, site-count and cell limits of ``cfg``."""
    lo, hi = cfg.angle_range_deg
    return (row.n_sites <= cfg.max_sites and row.n_atoms() <= cfg.max_atoms
            and bool(np.all(row.cell[:3] < cfg.max_length_A))
            and bool(np.all((row.cell[3:] >= lo) & (row.cell[3:] <= hi))))


def generator_choices(row: Row, site: int) -> np.ndarray:
    """All orbit members of site ``site`` that lie on their position's generator
    (distinct, wrapped into [0, 1)): the equivalent representatives of that site."""
    wp = space_group(row.spg).wyckoff[row.wps[site]]
    orbit = expand_site(wp, row.xyz[site])
    gen = wp.generator
    on_gen = orbit @ gen[:, :3].T + gen[:, 3]
    delta = on_gen - orbit
    ok = np.all(np.abs(delta - np.round(delta)) < 1e-6, axis=1)
    cands = np.round(orbit[ok] % 1.0, 8) % 1.0
    return np.unique(cands, axis=0)


def _rep_key(row: Row) -> tuple:
    return (row.spg, tuple(row.wps.tolist()), tuple(np.round(row.cell, 3).tolist()))


def subgroup_rows(row: Row, cfg: AugmentConfig) -> list[Row]:
    """``row`` and up to ``cfg.max_reps - 1`` descriptions of the same crystal in
    subgroups, breadth-first, within the limits of ``cfg`` (pyxtal's Wyckoff splitting)."""
    seen = {_rep_key(row)}
    out = [row]
    frontier = [row]
    for _ in range(cfg.max_depth):
        nxt = []
        for parent in frontier:
            # a cell may grow only as far as the atom limit allows
            max_cell = min(cfg.max_cell, cfg.max_atoms // parent.n_atoms())
            for gtype in cfg.group_types if max_cell >= 1 else ():
                if len(out) >= cfg.max_reps:
                    return out
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # pyxtal prints
                        subs = to_pyxtal(parent).subgroup(eps=0, group_type=gtype,
                                                          max_cell=max_cell)
                except Exception as err:  # pyxtal raises bare exceptions on odd splits
                    log.debug("space group %d, %s-subgroups failed: %s", parent.spg, gtype, err)
                    continue
                for sub in subs:
                    if sub is None or len(sub.atom_sites) > cfg.max_sites:
                        continue
                    try:
                        child = from_pyxtal(sub)
                    except DecodeError:
                        continue
                    key = _rep_key(child)
                    if key in seen or not within_limits(child, cfg):
                        continue
                    seen.add(key)
                    out.append(child)
                    nxt.append(child)
                    if len(out) >= cfg.max_reps:
                        return out
        frontier = nxt
    return out


def with_generator_choices(row: Row, n: int, rng: np.random.Generator) -> list[Row]:
    """``row`` and up to ``n - 1`` other rows that pick other generator representatives."""
    choices = [generator_choices(row, k) for k in range(row.n_sites)]
    out, seen = [row], {row.xyz.round(6).tobytes()}
    total = int(np.prod([len(c) for c in choices], dtype=float).clip(max=10 ** 9))
    for _ in range(min(4 * n, total)):
        if len(out) >= n:
            break
        xyz = row.xyz.copy()
        for k, c in enumerate(choices):
            xyz[k] = c[rng.integers(len(c))]
        key = xyz.round(6).tobytes()
        if key in seen:
            continue
        seen.add(key)
        out.append(Row(row.spg, row.cell.copy(), row.wps.copy(), xyz, species=row.species))
    return out


def _same_atoms(a: Row, b: Row, tol: float = 1e-5) -> bool:
    """Whether two rows of one cell give the same set of fractional positions."""
    pa, pb = a.frac_positions(), b.frac_positions()
    if len(pa) != len(pb) or not np.allclose(a.cell, b.cell):
        return False
    delta = pa[:, None, :] - pb[None, :, :]
    delta -= np.round(delta)
    return bool(np.all(np.abs(delta).max(-1).min(1) < tol))


def augment_row(row: Row, cfg: AugmentConfig, seed: int) -> tuple[list[Row], int]:
    """All verified rows of one crystal, and the number of candidates rejected.

    A subgroup description is kept if it decodes again to a crystal with the source's
    :class:`Fingerprint`; a generator choice within a kept description if it decodes
    to exactly the same atoms in the same cell.
    """
    if not within_limits(row, cfg):
        return [], 1
    ref = fingerprint(row)
    rng = np.random.default_rng(seed)
    kept, rejected = [], 0
    for rep in subgroup_rows(row, cfg):
        try:
            base = decode(rep.spg, rep.cell, rep.wps, rep.xyz)
            ok = within_limits(base, cfg) and fingerprint(base).matches(ref)
        except (DecodeError, ValueError):
            ok = False
        if not ok:
            rejected += 1
            continue
        kept.append(base)
        for cand in with_generator_choices(base, cfg.n_choices, rng)[1:]:
            try:
                again = decode(cand.spg, cand.cell, cand.wps, cand.xyz)
                ok = _same_atoms(again, base)
            except DecodeError:
                ok = False
            if ok:
                kept.append(again)
            else:
                rejected += 1
    return kept, rejected


def _augment_task(args: tuple[Row, AugmentConfig, int]) -> tuple[list[Row], int]:
    row, cfg, seed = args
    return augment_row(row, cfg, seed)


def augment_table(table: Table, cfg: AugmentConfig, workers: int | None = None) -> tuple[Table, dict]:
    """Augmented training table of every row of ``table`` (parallel over crystals).

    Structure rows (crystals that need more than 8 sites) are left out. Deterministic
    for ``cfg.seed``: crystal ``i`` uses seed ``(cfg.seed, i)`` and results
    are gathered in input order whatever the number of workers. ``origin`` is
    ``"<source origin>#<k>"``; ``source_id`` keeps the source row id.
    """
    as_structure = structure_rows(table)
    if as_structure.any():  # no row to describe in subgroups: not training rows
        log.info("%d structure rows (more than %d Wyckoff sites) left out", int(as_structure.sum()),
                 N_SITES)
        table = table.take(np.flatnonzero(~as_structure))
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(table))
    tasks = [(table.row(i), cfg, int(seeds[i].generate_state(1)[0])) for i in range(len(table))]
    workers = workers or min(len(tasks), os.cpu_count() or 1)
    results = []
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(tasks) > 1:
            done = stack.enter_context(ProcessPoolExecutor(workers)).map(_augment_task, tasks)
        else:
            done = map(_augment_task, tasks)
        for result in done:
            results.append(result)
            if len(results) % 10 == 0 or len(results) == len(tasks):
                log.info("augmented %d of %d crystals: %d rows so far", len(results), len(tasks),
                         sum(len(r[0]) for r in results))
    rows, origins, source_ids = [], [], []
    rejected = 0
    for i, (kept, bad) in enumerate(results):
        rejected += bad
        rows += kept
        origins += [f"{table['origin'][i]}#{k}" for k in range(len(kept))]
        source_ids += [int(table["id"][i])] * len(kept)
    out = Table.from_rows(rows, np.arange(len(rows)), origins,
                          source_id=np.asarray(source_ids, dtype=np.uint64))
    conditions = {(r.spg, tuple(r.wps.tolist())) for r in rows}
    stats = {"rows": len(rows), "sources": len(table), "rejected": rejected,
             "conditions": len(conditions)}
    return out, stats


def prepare(src: str | Path, dest: str | Path, cfg: AugmentConfig,
            workers: int | None = None) -> dict:
    """Augment the rows of table file ``src`` into training table ``dest`` (kind
    ``training``, the config recorded as attributes); returns the counts."""
    table, _ = read_table(src)
    start = time.perf_counter()
    out, stats = augment_table(table, cfg, workers)
    stats["seconds"] = round(time.perf_counter() - start, 1)
    write_table(dest, out, kind="training", source=str(src),
                augment_config=json.dumps(to_mapping(cfg)), **{f"n_{k}": v for k, v in stats.items()})
    log.info("%s: %d rows, %d conditions from %d crystals (%d rejected) in %.0f s", dest,
             stats["rows"], stats["conditions"], stats["sources"], stats["rejected"],
             stats["seconds"])
    return stats
