"""Import and export of tables: the published CSV, CIF, extxyz and ASE databases.

Imports return ``(table, quarantine)``: rows that decode, and rows that do not, each
with its origin (file and line or index) and the reason, so nothing is lost silently.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hpcxtal.progress import progress
from hpcxtal.crystal.row import N_SITES, DecodeError, Row, decode, from_structure, to_atoms
from hpcxtal.store.table import Structures, Table, str_array


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    """Where the candidate pool comes from."""

    inputs: list[str] = field(default_factory=lambda: ["sacada"])
    snap_tolerance_A: float | None = None
    symmetry_tolerance_A: float = 0.01

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: give at least one file (CSV, CIF, extxyz, ASE db, "
                             ".h5) or 'sacada' for the bundled set")
        if self.snap_tolerance_A is not None and self.snap_tolerance_A <= 0:
            raise ValueError("snap_tolerance_A must be positive or null")

log = logging.getLogger(__name__)

CSV_COLUMNS = ["spg", "a", "b", "c", "alpha", "beta", "gamma"] + [
    f"{name}{k}" for k in range(N_SITES) for name in ("wp", "x", "y", "z")
]
STRUCTURE_SUFFIXES = {".cif": "cif", ".xyz": "extxyz", ".extxyz": "extxyz", ".db": "ase"}
IMPORT_SUFFIXES = (".csv", ".h5", *STRUCTURE_SUFFIXES)
EXPORT_FORMATS = ("csv", "cif", "extxyz", "ase")


class FormatError(ValueError):
    """An input file this module cannot read at all (not one bad row)."""


def quarantine_table(ids: Sequence[int], origins: Sequence[str], reasons: Sequence[str],
                     raw: Sequence[str], structures: Structures | None = None) -> Table:
    """Rows that could not be decoded: id, origin, reason and the raw input."""
    return Table({"id": np.asarray(ids, dtype=np.uint64), "origin": str_array(origins),
                  "reason": str_array(reasons), "raw": str_array(raw)}, structures)


def read_csv(path: str | Path, first_id: int = 0,
             snap_tolerance: float | None = None) -> tuple[Table, Table]:
    """Rows of a published tabular CSV (angles in radians, -1 padding).

    Ids are ``first_id + k`` for the k-th data line, decodable or not.
    """
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise FormatError(f"{path}: empty file") from None
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise FormatError(f"{path}: not a tabular crystal CSV; missing columns {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}")
        pick = [header.index(c) for c in CSV_COLUMNS]
        rows, ids, origins = [], [], []
        q_ids, q_origins, q_reasons, q_raw = [], [], [], []
        for k, line in enumerate(reader):
            row_id, origin = first_id + k, f"{path.name}:{k + 2}"
            try:
                values = np.array([float(line[i]) for i in pick])
                cell = values[1:7].copy()
                cell[3:] = np.degrees(cell[3:])
                sites = values[7:].reshape(N_SITES, 4)
                row = decode(values[0], cell, sites[:, 0], sites[:, 1:], snap_tolerance)
            except (DecodeError, ValueError, IndexError) as err:
                q_ids.append(row_id), q_origins.append(origin)
                q_reasons.append(str(err) if isinstance(err, DecodeError) else f"unreadable line: {err}")
                q_raw.append(",".join(line))
                continue
            rows.append(row), ids.append(row_id), origins.append(origin)
    table = Table.from_rows(rows, ids, origins,
                            snap_distance=np.array([r.snap_distance for r in rows]))
    return table, quarantine_table(q_ids, q_origins, q_reasons, q_raw)


def write_csv(path: str | Path, table: Table) -> Path:
    """The published CSV layout: angles in radians, exact -1 padding."""
    path = Path(path)
    cell = table["cell"].copy()
    cell[:, 3:] = np.radians(cell[:, 3:])
    sites = np.concatenate([table["wps"][:, :, None].astype(float), table["xyz"]], axis=2)
    sites[table["wps"] < 0] = -1.0
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for spg, c, s in zip(table["spg"], cell, sites):
            site_values = [int(v) if j % 4 == 0 else repr(float(v))
                           for j, v in enumerate(s.reshape(-1))]
            writer.writerow([int(spg)] + [repr(float(v)) for v in c] + site_values)
    return path


def read_images(path: str | Path) -> list[tuple[str, object]]:
    """(origin, ASE Atoms) for every structure in a CIF, extxyz or ASE db file."""
    import ase.io

    path = Path(path)
    kind = STRUCTURE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FormatError(f"{path}: unknown input format {path.suffix!r}; "
                          f"use one of {', '.join(IMPORT_SUFFIXES)}")
    try:
        if kind == "ase":
            from ase.db import connect

            with connect(path) as db:
                return [(f"{path.name}:id={r.id}", r.toatoms()) for r in db.select()]
        images = ase.io.read(path, index=":", format=kind)
    except Exception as err:  # ASE raises many types on malformed files
        raise FormatError(f"{path}: cannot read as {kind}: {err}") from None
    return [(f"{path.name}:{k}", atoms) for k, atoms in enumerate(images)]


def rows_from_images(images: Sequence[tuple[str, object]], first_id: int = 0,
                     tol: float = 0.01) -> tuple[Table, Table]:
    """Decode structures into rows by symmetry analysis; keep every source structure.

    Structures that need more than 8 Wyckoff sites (or fail the analysis) go to the
    quarantine with their structure, so later stages can still use them.
    """
    good, bad = [], []
    for k, (origin, atoms) in progress(enumerate(images), len(images), "symmetry analysis"):
        try:
            good.append((first_id + k, origin, atoms, from_structure(atoms, tol=tol)))
        except DecodeError as err:
            bad.append((first_id + k, origin, atoms, str(err)))
    table = Table.from_rows([g[3] for g in good], [g[0] for g in good], [g[1] for g in good])
    table.structures = Structures.from_atoms([g[2] for g in good])
    quarantine = quarantine_table([b[0] for b in bad], [b[1] for b in bad], [b[3] for b in bad],
                                  [b[2].get_chemical_formula() for b in bad],
                                  Structures.from_atoms([b[2] for b in bad]))
    return table, quarantine


def import_files(paths: Iterable[str | Path], snap_tolerance: float | None = None,
                 tol: float = 0.01) -> tuple[Table, Table]:
    """Import any mix of CSV and structure files; ids run on across files."""
    tables, quarantines, next_id = [], [], 0
    for path in map(Path, paths):
        if not path.exists():
            raise FormatError(f"{path}: no such file")
        if path.suffix.lower() == ".csv":
            table, quarantine = read_csv(path, next_id, snap_tolerance)
        elif path.suffix.lower() == ".h5":
            table, quarantine = _read_h5_table(path, next_id)
        else:
            table, quarantine = rows_from_images(read_images(path), next_id, tol)
        n = len(table) + len(quarantine)
        log.info("%s: %d rows, %d quarantined", path, len(table), len(quarantine))
        next_id += n
        tables.append(table), quarantines.append(quarantine)
    return _concat_mixed(tables), _concat_mixed(quarantines)


def _read_h5_table(path: Path, first_id: int) -> tuple[Table, Table]:
    """Rows of an hpcxtal table file, renumbered from ``first_id`` (rows first, then
    its quarantine); origins keep the file name and the old id."""
    from hpcxtal.store.hdf5 import read_table

    table, quarantine = read_table(path)
    if quarantine is None:
        quarantine = quarantine_table([], [], [], [])
    ids = np.arange(first_id, first_id + len(table) + len(quarantine), dtype=np.uint64)
    for part, new in ((table, ids[:len(table)]), (quarantine, ids[len(table):])):
        part.columns["origin"] = str_array(f"{path.name}:id={old}" for old in part["id"])
        part.columns["id"] = new
    return table, quarantine


def _concat_mixed(parts: list[Table]) -> Table:
    """Concatenate tables that may differ in optional columns and structures, keeping
    only what all non-empty parts have."""
    parts = [p for p in parts if len(p)] or parts[:1]
    names = [c for c in parts[0].columns if all(c in p for p in parts)]
    keep_structures = all(p.structures is not None for p in parts)
    return Table.concat([Table({c: p[c] for c in names}, p.structures if keep_structures else None)
                         for p in parts])


#: Database columns exported with each structure (``atoms.info`` key: column); finite
#: numbers and non-empty strings only. Energies are per atom, hence the key's name.
INFO_COLUMNS = {"energy_per_atom": "energy", "e_rel": "e_rel", "class": "class",
                "topology": "topology_relaxed", "known_phase": "known_phase",
                "dimension": "dimension_relaxed", "spg_relaxed": "spg_relaxed",
                "status": "status"}


def _info(table: Table, i: int) -> dict[str, object]:
    """The ``INFO_COLUMNS`` of row ``i`` that ``table`` has, as plain Python values."""
    out: dict[str, object] = {}
    for key, name in INFO_COLUMNS.items():
        if name in table:
            value = table[name][i]
            value = value.item() if hasattr(value, "item") else value
            if (isinstance(value, str) and value) or (
                    isinstance(value, (int, float)) and np.isfinite(value)):
                out[key] = value
    return out


def table_images(table: Table) -> list:
    """ASE Atoms for every row: the stored structure if any, else the row expanded;
    ``info`` holds id, origin, stated spg and the ``INFO_COLUMNS`` the table has."""
    images = []
    for i in range(len(table)):
        atoms = table.structures.atoms(i) if table.structures is not None else to_atoms(table.row(i))
        atoms.info.update({"id": int(table["id"][i]), "origin": str(table["origin"][i])})
        if "spg" in table:
            atoms.info["spg"] = int(table["spg"][i])
        atoms.info.update(_info(table, i))
        images.append(atoms)
    return images


def write_cif(atoms, path: str | Path, symprec: float | None = None) -> Path:
    """``atoms`` as a CIF whose data block is named by ``atoms.info['id']``; with
    ``symprec`` (Å) symmetrised in the space group spglib finds at that tolerance."""
    import ase.io

    path = Path(path)
    name = f"hpcxtal_{atoms.info.get('id', path.stem)}"
    if symprec is None:
        ase.io.write(path, atoms, format="cif")
        text = re.sub(r"^data_.*$", f"data_{name}", path.read_text(), count=1, flags=re.M)
    else:
        from pymatgen.io.ase import AseAtomsAdaptor
        from pymatgen.io.cif import CifWriter

        plain = atoms.copy()
        plain.info = {}
        text = str(CifWriter(AseAtomsAdaptor.get_structure(plain), symprec=symprec))
        text = re.sub(r"^data_.*$", f"data_{name}", text, count=1, flags=re.M)
    path.write_text(text)
    return path


def export_table(table: Table, fmt: str, dest: str | Path, symprec: float | None = None) -> Path:
    """Write ``table`` as ``fmt``: csv (one file), cif (a folder, one file per row named
    by id; symmetrised at ``symprec`` Å if given), extxyz (one file), ase (an ASE SQLite
    database); structures carry the ``INFO_COLUMNS`` the table has."""
    import ase.io

    dest = Path(dest)
    if fmt not in EXPORT_FORMATS:
        raise FormatError(f"unknown export format {fmt!r}; choose from {EXPORT_FORMATS}")
    if fmt == "csv":
        return write_csv(dest, table)
    images = table_images(table)
    if fmt == "cif":
        dest.mkdir(parents=True, exist_ok=True)
        for atoms in images:
            write_cif(atoms, dest / f"{atoms.info['id']}.cif", symprec)
    elif fmt == "extxyz":
        ase.io.write(dest, images, format="extxyz")
    else:
        from ase.db import connect

        if dest.exists():
            dest.unlink()
        with connect(dest, type="db") as db:
            for atoms in images:
                info = dict(atoms.info)
                atoms.info = {}
                db.write(atoms, hpcxtal_id=info.pop("id"), **info)
    return dest
