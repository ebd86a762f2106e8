"""Import and export of tables: the published CSV, CIF, extxyz and ASE databases.

Imports return ``(table, quarantine)``: rows that decode, and rows that do not, each
with its origin (file and line or index) and the reason, so nothing is lost silently.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from hpcxtal.progress import progress
from hpcxtal.crystal.row import (CARBON, N_SITES, DecodeError, TooManySites,
                                 check_symmetry_tolerance, decode, from_structure,
                                 structure_row)
from hpcxtal.store.hdf5 import atomic_dir, atomic_path, write_text_atomic
from hpcxtal.store.table import ROW_COLUMNS, Structures, Table, str_array, structure_rows


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    """Where the candidate pool comes from."""

    inputs: list[str] = field(default_factory=lambda: ["sacada"])
    snap_tolerance_A: float | None = None
    symmetry_tolerance_A: float = 0.01
    #: Elements a structure file's crystals may hold (others go to the quarantine);
    #: null: any element. CSV and table rows say their own elements.
    elements: list[str] | None = field(default_factory=lambda: ["C"])

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: give at least one file (CSV, CIF, extxyz, ASE db, "
                             ".h5) or 'sacada' for the bundled set")
        if self.elements is not None:
            unknown = [el for el in self.elements if el not in atomic_numbers]
            if unknown or not self.elements:
                raise ValueError(f"elements: {unknown or 'none given'} are not element symbols "
                                 f"(or give null for any element)")
        if self.snap_tolerance_A is not None and self.snap_tolerance_A <= 0:
            raise ValueError("snap_tolerance_A must be positive or null")
        check_symmetry_tolerance(self.symmetry_tolerance_A)


log = logging.getLogger(__name__)

CSV_COLUMNS = ["spg", "a", "b", "c", "alpha", "beta", "gamma"] + [
    f"{name}{k}" for k in range(N_SITES) for name in ("wp", "x", "y", "z")
]
#: Optional element symbol per site ("" in an empty slot); a CSV without them is carbon.
CSV_ELEMENT_COLUMNS = [f"el{k}" for k in range(N_SITES)]
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


def read_text(path: Path) -> str:
    """The text of ``path``: UTF-8 (with or without a byte-order mark) or UTF-16 with
    its byte-order mark (what spreadsheet programs save); anything else is a FormatError."""
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not UTF-8 or UTF-16 text (byte {err.start}); save it as "
                          f"UTF-8") from None
    if "\0" in text:
        raise FormatError(f"{path}: binary data (NUL bytes), not a text CSV")
    return text


def read_csv(path: str | Path, first_id: int = 0,
             snap_tolerance: float | None = None) -> tuple[Table, Table]:
    """Rows of a published tabular CSV (angles in radians, -1 padding).

    Ids are ``first_id + k`` for the k-th data line, decodable or not.
    """
    path = Path(path)
    with io.StringIO(read_text(path), newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise FormatError(f"{path}: empty file") from None
        except csv.Error as err:
            raise FormatError(f"{path}: not a readable CSV ({err})") from None
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise FormatError(f"{path}: not a tabular crystal CSV; missing columns {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}")
        pick = [header.index(c) for c in CSV_COLUMNS]
        named = [header.index(c) for c in CSV_ELEMENT_COLUMNS if c in header]
        if named and len(named) != N_SITES:
            raise FormatError(f"{path}: element columns must be all of {CSV_ELEMENT_COLUMNS[0]}-"
                              f"{CSV_ELEMENT_COLUMNS[-1]} or none")
        rows, ids, origins = [], [], []
        q_ids, q_origins, q_reasons, q_raw = [], [], [], []
        for k, line in enumerate(_csv_lines(reader, path)):
            row_id, origin = first_id + k, f"{path.name}:{k + 2}"
            try:
                values = np.array([float(line[i]) for i in pick])
                cell = values[1:7].copy()
                cell[3:] = np.degrees(cell[3:])
                sites = values[7:].reshape(N_SITES, 4)
                species = _csv_species([line[i] for i in named]) if named else None
                row = decode(values[0], cell, sites[:, 0], sites[:, 1:], snap_tolerance,
                             species=species)
            except (DecodeError, ValueError, IndexError) as err:
                q_ids.append(row_id), q_origins.append(origin)
                q_reasons.append(str(err) if isinstance(err, DecodeError) else f"unreadable line: {err}")
                q_raw.append(",".join(line))
                continue
            rows.append(row), ids.append(row_id), origins.append(origin)
    table = Table.from_rows(rows, ids, origins,
                            snap_distance=np.array([r.snap_distance for r in rows]))
    return table, quarantine_table(q_ids, q_origins, q_reasons, q_raw)


def _csv_species(symbols: Sequence[str]) -> np.ndarray:
    """Atomic numbers of a CSV line's element columns (0 where blank or -1: an empty
    slot); an unknown symbol is a DecodeError naming it."""
    out = np.zeros(len(symbols), dtype=np.int64)
    for k, el in enumerate(s.strip() for s in symbols):
        if el in ("", "-1"):
            continue
        if el not in atomic_numbers:
            raise DecodeError(f"site {k}: {el!r} is not an element symbol")
        out[k] = atomic_numbers[el]
    return out


def _csv_lines(reader, path: Path) -> Iterable[list[str]]:
    """The lines of ``reader``; a line the csv module cannot split is a FormatError
    naming it (it would otherwise end the file early)."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise FormatError(f"{path}:{reader.line_num}: not a readable CSV line ({err})") from None


def write_csv(path: str | Path, table: Table) -> Path:
    """The published CSV layout: angles in radians, exact -1 padding, and the element
    columns el0..el7 where a row holds another element than carbon (written
    atomically: a full disk leaves the previous file or none, never a truncated one)."""
    path = Path(path)
    cell = table["cell"].copy()
    cell[:, 3:] = np.radians(cell[:, 3:])
    sites = np.concatenate([table["wps"][:, :, None].astype(float), table["xyz"]], axis=2)
    sites[table["wps"] < 0] = -1.0
    species = np.where(table["wps"] >= 0, table["species"], 0)
    named = bool(np.any(species[table["wps"] >= 0] != CARBON))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS + (CSV_ELEMENT_COLUMNS if named else []))
        for spg, c, s, z in zip(table["spg"], cell, sites, species):
            site_values = [int(v) if j % 4 == 0 else repr(float(v))
                           for j, v in enumerate(s.reshape(-1))]
            elements = [chemical_symbols[v] if v else "" for v in z] if named else []
            writer.writerow([int(spg)] + [repr(float(v)) for v in c] + site_values + elements)
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
                     tol: float = 0.01, elements: Sequence[str] | None = ("C",)
                     ) -> tuple[Table, Table]:
    """Decode structures into rows by symmetry analysis; keep every source structure.

    A crystal whose symmetry needs more than 8 Wyckoff sites (a P1 structure of many
    atoms, say) becomes a structure row (:func:`hpcxtal.crystal.row.structure_row`) and
    goes on as its structure. Structures that are no crystal of ``elements`` (None: any;
    molecules, partial or mixed occupancy, other elements, overlapping atoms) or fail
    the analysis go to the quarantine with their structure, so later stages can still
    use them; one without a periodic cell keeps its geometry in ``raw``.
    """
    check_symmetry_tolerance(tol)
    good, bad = [], []
    for k, (origin, atoms) in progress(enumerate(images), len(images), "symmetry analysis"):
        try:
            good.append((first_id + k, origin, atoms, from_structure(atoms, tol=tol,
                                                                     elements=elements)))
        except TooManySites as err:
            log.info("%s: %s; kept as a structure", origin, err)
            good.append((first_id + k, origin, atoms, structure_row(atoms, err.spg)))
        except DecodeError as err:
            bad.append((first_id + k, origin, atoms, str(err)))
    table = Table.from_rows([g[3] for g in good], [g[0] for g in good], [g[1] for g in good])
    table.structures = Structures.from_atoms([g[2] for g in good])
    kept = [_storable(b[2]) for b in bad]
    quarantine = quarantine_table([b[0] for b in bad], [b[1] for b in bad], [b[3] for b in bad],
                                  [b[2].get_chemical_formula() if ok else _geometry_text(b[2])
                                   for b, ok in zip(bad, kept)],
                                  Structures.from_atoms([b[2] if ok else _no_atoms()
                                                         for b, ok in zip(bad, kept)]))
    return table, quarantine


def _storable(atoms) -> bool:
    """Whether ``atoms`` fits :class:`Structures` (a finite cell of nonzero volume)."""
    cell = np.asarray(atoms.cell, dtype=float)
    return bool(np.all(np.isfinite(cell)) and abs(np.linalg.det(cell)) > 1e-6
                and np.all(np.isfinite(atoms.positions)))


def _geometry_text(atoms) -> str:
    """JSON of the symbols, Cartesian positions (Å), cell and pbc of ``atoms``."""
    return json.dumps({"symbols": atoms.get_chemical_symbols(),
                       "positions": np.asarray(atoms.positions).tolist(),
                       "cell": np.asarray(atoms.cell).tolist(), "pbc": atoms.pbc.tolist()})


def _no_atoms():
    """An empty stand-in for a structure :class:`Structures` cannot hold."""
    from ase import Atoms

    return Atoms(cell=np.eye(3), pbc=True)


def import_files(paths: Iterable[str | Path], snap_tolerance: float | None = None,
                 tol: float = 0.01, elements: Sequence[str] | None = ("C",)
                 ) -> tuple[Table, Table]:
    """Import any mix of CSV, structure files and hpcxtal tables; every row passes
    :func:`~hpcxtal.crystal.row.decode` (the one gate into a pool); ids run on across
    files."""
    tables, quarantines, next_id = [], [], 0
    for path in map(Path, paths):
        if not path.is_file():
            raise FormatError(f"{path}: no such file" if not path.exists() else
                              f"{path}: not a file (give files, or one campaign directory)")
        if path.suffix.lower() == ".csv":
            table, quarantine = read_csv(path, next_id, snap_tolerance)
        elif path.suffix.lower() == ".h5":
            table, quarantine = _read_h5_table(path, next_id, snap_tolerance)
        else:
            table, quarantine = rows_from_images(read_images(path), next_id, tol, elements)
        n = len(table) + len(quarantine)
        log.info("%s: %d rows, %d quarantined", path, len(table), len(quarantine))
        next_id += n
        tables.append(table), quarantines.append(quarantine)
    return _concat_mixed(tables), _concat_mixed(quarantines, pad_structures=True)


def _read_h5_table(path: Path, first_id: int,
                   snap_tolerance: float | None = None) -> tuple[Table, Table]:
    """Rows of an hpcxtal table file, each decoded again (a file is no proof of good
    rows: space group 0, a NaN cell or Wyckoff index 77 go to the quarantine; structure
    rows pass as they are), then
    renumbered from ``first_id`` (rows first, then its quarantine); origins keep the
    file name and the old id."""
    from hpcxtal.store.hdf5 import read_table

    table, quarantine = read_table(path)
    missing = [c for c in ROW_COLUMNS if c not in table]
    if missing:
        raise FormatError(f"{path}: not a table of crystal rows (no {', '.join(missing)} column)")
    if quarantine is None:
        quarantine = quarantine_table([], [], [], [])
    for column, value in (("reason", f"quarantined in {path.name}"), ("raw", "")):
        if column not in quarantine:
            quarantine.columns[column] = str_array([value] * len(quarantine))
    ids = np.arange(first_id, first_id + len(table) + len(quarantine), dtype=np.uint64)
    for part, new in ((table, ids[:len(table)]), (quarantine, ids[len(table):])):
        part.columns["origin"] = str_array(f"{path.name}:id={old}" for old in part["id"])
        part.columns["id"] = new
    good, reasons = [], []
    spg, cell, wps, xyz = table["spg"].copy(), table["cell"].copy(), table["wps"], table["xyz"].copy()
    species = table["species"].copy()
    as_structure = structure_rows(table)
    for i in range(len(table)):
        if as_structure[i]:
            good.append(i)
            continue
        try:
            row = decode(spg[i], cell[i], wps[i].astype(float), xyz[i], snap_tolerance,
                         species=species[i])
        except DecodeError as err:
            reasons.append((i, str(err)))
            continue
        spg[i], cell[i], xyz[i], species[i] = row.spg, row.cell, row.xyz, row.species
        wps[i] = row.wps
        good.append(i)
    table.columns.update(spg=spg, cell=cell, xyz=xyz, species=species)
    if reasons:
        bad = table.take([i for i, _ in reasons])
        raw = [json.dumps({"spg": int(bad["spg"][k]), "cell": bad["cell"][k].tolist(),
                           "wps": bad["wps"][k].tolist(), "xyz": bad["xyz"][k].tolist(),
                           "species": bad["species"][k].tolist()})
               for k in range(len(bad))]
        rejected = quarantine_table(bad["id"], bad["origin"], [r for _, r in reasons], raw,
                                    bad.structures)
        quarantine = _concat_mixed([rejected, quarantine], pad_structures=True)
        table = table.take(good)
    return table, quarantine


def _concat_mixed(parts: list[Table], pad_structures: bool = False) -> Table:
    """Concatenate tables that may differ in optional columns and structures, keeping
    only the columns all non-empty parts have; structures are kept where all parts
    have them, or (``pad_structures``, for quarantines) where any has, the others
    getting empty ones, so no quarantined geometry is dropped."""
    parts = [p for p in parts if len(p)] or parts[:1]
    names = [c for c in parts[0].columns if all(c in p for p in parts)]
    have = [p.structures is not None for p in parts]
    keep = all(have) or (pad_structures and any(have))
    return Table.concat([Table({c: p[c] for c in names},
                               (p.structures if p.structures is not None else _empty_structures(len(p)))
                               if keep else None) for p in parts])


def _empty_structures(n: int) -> Structures:
    """``n`` structures of no atoms (rows that came without one)."""
    return Structures(np.zeros(n), np.zeros((n, 3, 3)), np.zeros((0, 3)), np.zeros(0))


#: Database columns exported with each structure (``atoms.info`` key: column); finite
#: numbers and non-empty strings only. Energies are per atom, hence the key's name.
INFO_COLUMNS = {"energy_per_atom": "energy", "e_rel": "e_rel", "class": "class",
                "topology": "topology_relaxed", "known_phase": "known_phase",
                "dimension": "dimension_relaxed", "spg_relaxed": "spg_relaxed",
                "status": "status", "tier": "tier", "e_rel_screen": "e_rel_screen",
                "e_rel_rescore": "e_rel_rescore"}


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
    """ASE Atoms for every row (:meth:`Table.atoms`: the stored structure if any, else the
    row expanded); ``info`` holds id, origin, stated spg and the ``INFO_COLUMNS`` the
    table has."""
    images = []
    for i in range(len(table)):
        atoms = table.atoms(i)
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
        buffer = io.BytesIO()
        ase.io.write(buffer, atoms, format="cif")
        text = re.sub(r"^data_.*$", f"data_{name}", buffer.getvalue().decode(), count=1,
                      flags=re.M)
    else:
        from pymatgen.io.ase import AseAtomsAdaptor
        from pymatgen.io.cif import CifWriter

        plain = atoms.copy()
        plain.info = {}
        text = str(CifWriter(AseAtomsAdaptor.get_structure(plain), symprec=symprec))
        text = re.sub(r"^data_.*$", f"data_{name}", text, count=1, flags=re.M)
    return write_text_atomic(path, text)


def export_table(table: Table, fmt: str, dest: str | Path, symprec: float | None = None) -> Path:
    """Write ``table`` as ``fmt``: csv (one file), cif (a folder, one file per row named
    by id; symmetrised at ``symprec`` Å if given), extxyz (one file), ase (an ASE SQLite
    database); structures carry the ``INFO_COLUMNS`` the table has. Every format is
    written atomically: under a temporary name, then renamed (the CIF folder as a whole)."""
    import ase.io

    dest = Path(dest)
    if fmt not in EXPORT_FORMATS:
        raise FormatError(f"unknown export format {fmt!r}; choose from {EXPORT_FORMATS}")
    if fmt == "csv":
        return write_csv(dest, table)
    images = table_images(table)
    if fmt == "cif":
        with atomic_dir(dest, (".cif",)) as tmp:
            for atoms in images:
                write_cif(atoms, tmp / f"{atoms.info['id']}.cif", symprec)
    elif fmt == "extxyz":
        with atomic_path(dest) as tmp:
            ase.io.write(tmp, images, format="extxyz")
    else:
        from ase.db import connect

        with atomic_path(dest) as tmp:
            with connect(tmp, type="db") as db:
                for atoms in images:
                    info = dict(atoms.info)
                    atoms.info = {}
                    db.write(atoms, hpcxtal_id=info.pop("id"), **info)
    return dest
