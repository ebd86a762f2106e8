"""HDF5 files of tables: atomic writes, checksums, verification before trust.

Layout of a table file (``kind`` = pool, shard, refine, ...)::

    /                      attrs: format, schema_version, kind, n_rows, sha256,
                                  hpcxtal_version, created_by, created_at, units, ...
    /id /spg /wps /cell /xyz /origin /<stage columns>      one entry per row
    /structures/{natoms,offset,lattice,frac,numbers}       optional ragged structures
    /quarantine/...                                        rows that could not be used,
                                                           with ``reason`` (same layout)

Every file is written under a temporary name (``.NAME.tmp-PID@HOST``; a table is built
in memory first, so a full disk is a plain OSError), fsynced and renamed into place, and records its row count and a SHA-256 over all its datasets and
the root attributes that define it (``format``, ``schema_version``, ``kind``,
``n_rows``; files written before that cover their datasets only, marked by the absence
of ``sha256_scope``); :func:`read_table` checks both (and HDF5's own per-chunk
Fletcher-32 checksums) before returning data.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from hpcxtal import __version__
from hpcxtal.store.table import Structures, Table, str_array

FORMAT = "hpcxtal-table"
#: 2: row tables carry ``species`` (atomic number per Wyckoff slot); a version-1 file
#: has none and reads as carbon (its checksum covers what it stored).
SCHEMA_VERSION = 2
UNITS = "cell: a, b, c in angstrom and alpha, beta, gamma in degrees; xyz fractional"
STRUCTURE_FIELDS = ("natoms", "lattice", "frac", "numbers")
CHUNK_BYTES = 1 << 20
#: Root attributes that describe the file itself; they never carry over from a table.
RESERVED_ATTRS = frozenset({"format", "schema_version", "kind", "hpcxtal_version", "created_by",
                            "created_at", "units", "n_rows", "sha256", "sha256_scope"})
#: Root attributes the checksum covers besides the datasets (files with ``sha256_scope``).
CHECKSUM_ATTRS = ("format", "kind", "n_rows", "schema_version")
CHECKSUM_SCOPE = "datasets+" + ",".join(CHECKSUM_ATTRS)


class StoreError(OSError):
    """A file that is missing, truncated, corrupted or not an hpcxtal table."""


#: Called as ``listener(path, attrs)`` after each table file is in place: a
#: :class:`hpcxtal.store.provenance.Provenance` notes what this process wrote, so it
#: never re-reads its own outputs.
_write_listeners: list[Callable[[Path, dict[str, object]], None]] = []


def on_write(listener: Callable[[Path, dict[str, object]], None]) -> None:
    """Call ``listener(path, root attributes)`` after every :func:`write_table`."""
    _write_listeners.append(listener)


#: Whether HDF5 file locking is used; site configs switch it off for Lustre/GPFS.
_locking: bool | None = None


def set_file_locking(enabled: bool | None) -> None:
    """Turn HDF5 file locking on or off for this process (None = HDF5's default)."""
    global _locking
    _locking = enabled


def _open(path: Path, mode: str) -> h5py.File:
    return h5py.File(path, mode, locking=_locking)


def temp_name(path: Path) -> Path:
    """The temporary name a writer in this process uses for ``path``:
    ``.NAME.tmp-PID@HOST`` beside it (see :mod:`hpcxtal.store.tempfiles`)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{socket.gethostname()}")


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into
    place, on failure remove it. Readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        if err.filename is None and err.strerror:  # a full disk: say which file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replaceable: tuple[str, ...]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success fsync its files and
    swap it into place, on failure remove it. An existing ``path`` is replaced only if
    it holds nothing but files ending in ``replaceable`` (an earlier output), so a
    folder of other files is never deleted."""
    path = Path(path)
    if path.exists():
        foreign = ([path.name] if not path.is_dir() else
                   [p.name for p in path.iterdir() if not (p.is_file() and p.name.endswith(replaceable))])
        if foreign:
            raise FileExistsError(f"{path}: exists and holds {', '.join(sorted(foreign)[:3])}, "
                                  f"not an earlier output ({', '.join(replaceable)} files only); "
                                  f"choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    old = path.with_name(f".{path.name}.old-{os.getpid()}@{socket.gethostname()}")
    try:
        tmp.mkdir()
        yield tmp
        for item in tmp.iterdir():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks (model and training files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_dataset(h: "hashlib._Hash", name: str, data: np.ndarray) -> None:
    h.update(f"{name}|{data.dtype.str if data.dtype != object else 'str'}|{data.shape}".encode())
    if data.dtype == object:
        h.update(b"\0".join(str(v).encode("utf-8") for v in data))
    else:
        h.update(np.ascontiguousarray(data).tobytes())


def _group_arrays(table: Table) -> dict[str, np.ndarray]:
    arrays = dict(table.columns)
    if table.structures is not None:
        s = table.structures
        arrays.update({f"structures/{f}": getattr(s, f) for f in STRUCTURE_FIELDS})
    return arrays


def table_checksum(table: Table, quarantine: Table | None = None,
                   attrs: dict[str, object] | None = None, leave_out: tuple[str, ...] = ()) -> str:
    """SHA-256 over every dataset of the file, in name order, then over the root
    attributes of :data:`CHECKSUM_ATTRS` when ``attrs`` is given (a file's kind and
    row count are part of what it is; without ``attrs``: the checksum of older files).
    ``leave_out`` names datasets (``quarantine/...`` for the quarantine's) added on
    reading that the file did not store."""
    h = hashlib.sha256()
    arrays = _group_arrays(table)
    if quarantine is not None:
        arrays.update({f"quarantine/{k}": v for k, v in _group_arrays(quarantine).items()})
    for name in leave_out:
        arrays.pop(name, None)
    for name in sorted(arrays):
        _hash_dataset(h, name, arrays[name])
    if attrs is not None:
        for key in CHECKSUM_ATTRS:
            h.update(f"@{key}={attrs.get(key)}".encode())
    return h.hexdigest()


def _write_dataset(group: h5py.Group, name: str, data: np.ndarray) -> None:
    if data.dtype == object:  # variable-length strings take no filters
        group.create_dataset(name, data=data, dtype=h5py.string_dtype("utf-8"))
    else:
        group.create_dataset(name, data=data, **_chunking(data.shape, data.dtype.itemsize))


def _chunking(shape: tuple[int, ...], itemsize: int) -> dict:
    if not shape or shape[0] == 0:
        return {}
    per_row = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    rows = int(max(1, min(shape[0], CHUNK_BYTES // max(per_row, 1))))
    return {"chunks": (rows, *shape[1:]), "compression": "gzip", "compression_opts": 1,
            "shuffle": True, "fletcher32": True}


def _write_group(group: h5py.Group, table: Table) -> None:
    for name, data in table.columns.items():
        _write_dataset(group, name, data)
    if table.structures is not None:
        sub = group.create_group("structures")
        for f in STRUCTURE_FIELDS:
            _write_dataset(sub, f, getattr(table.structures, f))
        _write_dataset(sub, "offset", table.structures.offsets)
    group.attrs["n_rows"] = len(table)


def write_table(path: str | os.PathLike, table: Table, kind: str,
                quarantine: Table | None = None, **attrs: object) -> Path:
    """Write ``table`` (and quarantined rows, if any) atomically to ``path``.

    ``kind`` names what the file holds (pool, shard, refine, ...); ``attrs`` are
    recorded as root attributes beside the table's own provenance attributes (campaign
    id, sources, parameters ...), overriding them where names clash.
    """
    path = Path(path)
    all_attrs = {**table.attrs, **attrs}
    defining = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "kind": kind,
                "n_rows": len(table)}
    # HDF5 is built in memory and written with plain file I/O: the HDF5 library hit by a
    # full disk mid-write crashes the process (segfault in h5py's cleanup); a plain
    # write raises OSError(ENOSPC), and atomic_path removes the partial file.
    image = io.BytesIO()
    with atomic_path(path) as tmp:
        with h5py.File(image, "w") as f:
            _write_group(f, table)
            if quarantine is not None:
                _write_group(f.create_group("quarantine"), quarantine)
            for key, value in all_attrs.items():
                if key not in RESERVED_ATTRS:
                    f.attrs[key] = value
            f.attrs.update({
                **defining,
                "hpcxtal_version": __version__,
                "created_by": " ".join(sys.argv) or "python",
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "units": UNITS,
                "sha256_scope": CHECKSUM_SCOPE,
            })
            f.attrs["sha256"] = written = table_checksum(table, quarantine, defining)
        with open(tmp, "wb") as fh:
            fh.write(image.getbuffer())
    for listener in _write_listeners:
        listener(path, {**all_attrs, "sha256": written})
    return path


def _read_dataset(ds: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return str_array(ds.asstr()[()])
    return ds[()]


def _read_group(group: h5py.Group) -> Table:
    columns = {name: _read_dataset(obj) for name, obj in group.items()
               if isinstance(obj, h5py.Dataset)}
    structures = None
    if "structures" in group:
        s = group["structures"]
        structures = Structures(*(s[f][()] for f in STRUCTURE_FIELDS))
    table = Table(columns, structures)
    if len(table) != int(group.attrs.get("n_rows", -1)) and columns:
        raise StoreError(f"{len(table)} rows but the file records {group.attrs.get('n_rows')}")
    return table


def _attrs_of(f: h5py.File) -> dict[str, object]:
    out = {}
    for key, value in f.attrs.items():
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def read_table(path: str | os.PathLike, verify: bool = True) -> tuple[Table, Table | None]:
    """The table in ``path`` and its quarantined rows (or None).

    Raises :class:`StoreError` naming the file if it is missing, unreadable, not an
    hpcxtal table, or (with ``verify``) its row count or checksum disagree.
    """
    table, quarantine, _ = _read(Path(path), verify)
    return table, quarantine


def _read(path: Path, verify: bool) -> tuple[Table, Table | None, dict[str, object]]:
    """Table, quarantine and every root attribute of ``path``, in one open."""
    if not path.exists():
        raise StoreError(f"{path}: no such file")
    try:
        with _open(path, "r") as f:
            attrs = _attrs_of(f)
            if attrs.get("format") != FORMAT:
                raise StoreError(f"{path}: not an hpcxtal table (format attribute "
                                 f"{attrs.get('format')!r})")
            if int(attrs.get("schema_version", 0)) > SCHEMA_VERSION:
                raise StoreError(f"{path}: schema version {attrs['schema_version']} is newer "
                                 f"than this hpcxtal ({SCHEMA_VERSION}); upgrade hpcxtal")
            table = _read_group(f)
            quarantine = _read_group(f["quarantine"]) if "quarantine" in f else None
            # Columns a Table adds on reading (species of a version-1 file) are not the
            # file's: its checksum covers what it stored.
            groups = (("species", f), ("quarantine/species", f.get("quarantine")))
            added = tuple(name for name, group in groups
                          if group is not None and "wps" in group and "species" not in group)
    except StoreError as err:
        if str(err).startswith(str(path)):
            raise
        raise StoreError(f"{path}: {err}") from None
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise StoreError(f"{path}: unreadable or corrupted HDF5 file ({err})") from None
    table.attrs = {k: v for k, v in attrs.items() if k not in RESERVED_ATTRS}
    if verify:
        expected = attrs.get("sha256")
        actual = table_checksum(table, quarantine, attrs if "sha256_scope" in attrs else None,
                                added)
        if expected != actual:
            raise StoreError(f"{path}: checksum mismatch (file says {expected}, "
                             f"data gives {actual}); the file is corrupted or was modified")
    return table, quarantine, attrs


def checked_attrs(path: str | os.PathLike) -> tuple[str | None, dict[str, object]]:
    """(None, every root attribute) if ``path`` is a complete, uncorrupted table file,
    else (what is wrong, {}); one read of the file."""
    try:
        return None, _read(Path(path), True)[2]
    except StoreError as err:
        return str(err), {}


def require_kind(path: str | os.PathLike, kinds: tuple[str, ...], use: str) -> None:
    """Raise :class:`StoreError` unless ``path`` is a table of one of ``kinds``, naming
    what it is and what ``use`` needs (a refine table is no pool, a pool no database)."""
    kind = file_summary(path)["attrs"].get("kind")
    if kind not in kinds:
        raise StoreError(f"{path}: a {kind!r} table, but {use} needs "
                         f"{' or '.join(repr(k) for k in kinds)}")


def verify_file(path: str | os.PathLike) -> str | None:
    """None if ``path`` is a complete, uncorrupted table file, else what is wrong."""
    return checked_attrs(path)[0]


def file_summary(path: str | os.PathLike) -> dict[str, object]:
    """Attributes, row counts and column shapes of a table file, without verifying."""
    path = Path(path)
    try:
        with _open(path, "r") as f:
            columns = {}
            f.visititems(lambda name, obj: columns.__setitem__(
                name, (obj.shape, str(obj.dtype))) if isinstance(obj, h5py.Dataset) else None)
            return {"attrs": _attrs_of(f), "columns": columns,
                    "n_quarantined": int(f["quarantine"].attrs["n_rows"]) if "quarantine" in f else 0}
    except (OSError, KeyError) as err:
        raise StoreError(f"{path}: unreadable or corrupted HDF5 file ({err})") from None
