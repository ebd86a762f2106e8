import csv
import json

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.io.ase import AseAtomsAdaptor

from hpcxtal.store.formats import (FormatError, export_table, import_files, read_csv,
                                   rows_from_images, table_images, write_csv)
from hpcxtal.store.hdf5 import read_table, write_table


def test_published_csv_round_trips(generated_csv, tmp_path):
    """999 rows: decodable ones survive CSV -> HDF5 -> CSV -> import to 1e-6; the rest
    are quarantined with reasons, and the two add up to every line."""
    table, quarantine = read_csv(generated_csv)
    n_lines = sum(1 for _ in open(generated_csv)) - 1
    assert n_lines == 999
    assert len(table) + len(quarantine) == 999
    assert sorted(np.concatenate([table["id"], quarantine["id"]])) == list(range(999))
    assert len(table) > 900
    assert all(r for r in quarantine["reason"])
    assert all("Wyckoff index" in r for r in quarantine["reason"])

    pool = write_table(tmp_path / "pool.h5", table, kind="pool", quarantine=quarantine)
    back, _ = read_table(pool)
    out = write_csv(tmp_path / "out.csv", back)
    again, again_q = read_csv(out)
    assert len(again_q) == 0 and len(again) == len(table)
    for col in ("spg", "wps"):
        assert np.array_equal(again[col], table[col])
    assert np.abs(again["cell"] - table["cell"]).max() < 1e-6
    occupied = table["wps"] >= 0
    assert np.abs(again["xyz"][occupied] - table["xyz"][occupied]).max() < 1e-6
    assert np.all(again["xyz"][~occupied] == -1)

    with open(out) as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:7] == ["spg", "a", "b", "c", "alpha", "beta", "gamma"]
    assert float(rows[1][4]) < 3.2  # angles in radians


def test_csv_that_is_not_tabular_is_refused(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("name,value\nfoo,1\n")
    with pytest.raises(FormatError, match="missing columns"):
        read_csv(bad)


def test_csv_with_garbage_line_is_quarantined(generated_csv, tmp_path):
    lines = open(generated_csv).read().splitlines()
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join([lines[0], lines[1], "152,abc", lines[2]]) + "\n")
    table, quarantine = read_csv(broken)
    assert len(table) + len(quarantine) == 3
    assert any("unreadable line" in r for r in quarantine["reason"])
    assert "broken.csv:3" in list(quarantine["origin"])


@pytest.mark.parametrize("fmt,name", [("cif", "cifs"), ("extxyz", "x.extxyz"), ("ase", "x.db")])
def test_structure_formats_round_trip(sacada, tmp_path, fmt, name):
    table, _ = sacada
    small = table.take(np.flatnonzero(table.structures.natoms <= 16)[:4])
    dest = export_table(small, fmt, tmp_path / name)
    sources = sorted(dest.glob("*.cif")) if fmt == "cif" else [dest]
    back, quarantine = import_files(sources)
    assert len(back) == len(small) and len(quarantine) == 0
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
    originals = [AseAtomsAdaptor.get_structure(a) for a in table_images(small)]
    for atoms in table_images(back):
        s = AseAtomsAdaptor.get_structure(atoms)
        assert any(matcher.fit(s, o) for o in originals)


def test_structures_beyond_eight_sites_become_structure_rows(sacada):
    from hpcxtal.store.table import structure_rows

    _, quarantine = sacada
    images = [(f"q{k}", quarantine.structures.atoms(k)) for k in range(2)]
    table, q = rows_from_images(images, first_id=10)
    assert len(q) == 0 and list(table["id"]) == [10, 11]
    assert structure_rows(table).all() and (table["wps"] == -1).all()
    assert np.array_equal(table.structures.natoms, quarantine.structures.natoms[:2])


def test_hdf5_pool_imports_with_new_ids(sacada, tmp_path):
    from hpcxtal.data import SACADA_PATH

    table, quarantine = import_files([SACADA_PATH, SACADA_PATH])
    assert len(table) == 288 and len(quarantine) == 12
    ids = np.concatenate([table["id"], quarantine["id"]])
    assert sorted(ids) == list(range(300))
    assert table["origin"][0].startswith("sacada_sp2.h5:id=")


def test_unknown_input_suffix(tmp_path):
    f = tmp_path / "x.pdb"
    f.write_text("")
    with pytest.raises(FormatError, match="unknown input format"):
        import_files([f])


def test_utf16_and_bom_csv_import_like_utf8(generated_csv, tmp_path):
    text = "\n".join(open(generated_csv).read().splitlines()[:6]) + "\n"
    expected, _ = read_csv(_write(tmp_path / "plain.csv", text.encode()))
    for name, data in (("u16.csv", text.encode("utf-16")), ("bom.csv", text.encode("utf-8-sig"))):
        table, quarantine = read_csv(_write(tmp_path / name, data))
        assert len(table) + len(quarantine) == 5
        assert np.array_equal(table["cell"], expected["cell"])


@pytest.mark.parametrize("data,message", [
    (b"spg,a\n\xff\xfe\xfa,1\n", "not UTF-8 or UTF-16 text"),
    (b"spg,a\x00b\n1,2\n", "binary data"),
])
def test_csv_that_is_not_text_is_one_format_error(tmp_path, data, message):
    with pytest.raises(FormatError, match=message):
        read_csv(_write(tmp_path / "bad.csv", data))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_csv_tetragonal_row_with_zero_length_is_quarantined_not_averaged(tmp_path):
    header = ",".join(["spg", "a", "b", "c", "alpha", "beta", "gamma"]
                      + [f"{n}{k}" for k in range(8) for n in ("wp", "x", "y", "z")])
    site = "0,0.1,0.2,0.3," + ",".join(["-1"] * 28)
    right = np.pi / 2
    lines = [f"75,{a},{b},5.0,{right},{right},{right},{site}" for a, b in
             (("0", "2.46"), ("-1", "10"), ("4.5", "4.5"))]
    table, quarantine = read_csv(_write(tmp_path / "t.csv", "\n".join([header, *lines]).encode()))
    assert list(table["id"]) == [2] and list(quarantine["id"]) == [0, 1]
    assert all("raw cell lengths" in r for r in quarantine["reason"])


def test_structures_a_row_cannot_hold_are_quarantined_with_reasons(cif_file, tmp_path):
    import ase.io
    from ase import Atoms

    sources = [cif_file(tmp_path / "si.cif", [("Si", 1.0)]),
               cif_file(tmp_path / "cn.cif", [("C", 0.5), ("N", 0.5)]),
               cif_file(tmp_path / "c.cif", [("C", 1.0)])]
    molecule = tmp_path / "mol.extxyz"
    ase.io.write(molecule, Atoms("C2", positions=[[0, 0, 0], [0, 0, 1.4]]), format="extxyz")
    table, quarantine = import_files(sources + [molecule])
    assert list(table["id"]) == [2] and table["spg"][0] == 227
    reasons = dict(zip(quarantine["id"].tolist(), quarantine["reason"]))
    assert "elements Si" in reasons[0] and "mixed occupancy" in reasons[1]
    assert "no periodic 3D cell" in reasons[3]
    geometry = json.loads(quarantine["raw"][list(quarantine["id"]).index(3)])
    assert geometry["symbols"] == ["C", "C"] and geometry["positions"][1] == [0, 0, 1.4]
    assert quarantine.structures.natoms.tolist() == [8, 8, 0]


def test_h5_rows_pass_decode_like_any_other_input(synthetic, tmp_path):
    from hpcxtal.store.table import Table

    table = synthetic(5)
    table.columns["spg"][0] = 0
    table.columns["cell"][1, 0] = np.nan
    table.columns["wps"][2, 0] = 77
    table.columns["cell"][3, :2] = [0.0, 2.46]  # raw a = 0; the mean would pass
    pool = write_table(tmp_path / "bad.h5", table, kind="pool",
                       quarantine=Table({"id": np.array([9], dtype=np.uint64),
                                         "origin": np.array(["x"], dtype=object),
                                         "reason": np.array(["old"], dtype=object)}))
    good, quarantine = import_files([pool])
    assert list(good["id"]) == [4]
    assert list(quarantine["id"]) == [0, 1, 2, 3, 5]
    reasons = list(quarantine["reason"])
    assert "space group" in reasons[0] and "finite" in reasons[1]
    assert "Wyckoff index 77" in reasons[2] and "raw cell lengths" in reasons[3]
    assert reasons[4] == "old" and list(quarantine["raw"])[4] == ""
    assert json.loads(quarantine["raw"][0])["spg"] == 0


def test_h5_without_crystal_rows_is_refused(tmp_path):
    from hpcxtal.store.table import Table

    path = write_table(tmp_path / "x.h5", Table({"id": np.arange(2)}), kind="pool")
    with pytest.raises(FormatError, match="not a table of crystal rows"):
        import_files([path])


def test_mixed_import_keeps_quarantined_structures(sacada, generated_csv, tmp_path):
    from hpcxtal.data import SACADA_PATH

    lines = open(generated_csv).read().splitlines()[:3] + ["152,abc"]
    csv_path = _write(tmp_path / "few.csv", ("\n".join(lines) + "\n").encode())
    _, quarantine = import_files([csv_path, SACADA_PATH])
    assert len(quarantine) == 7 and quarantine.structures is not None
    assert quarantine.structures.natoms[0] == 0 and (quarantine.structures.natoms[1:] > 0).all()


def _disk_full_after(monkeypatch, rows: int) -> None:
    """Make the CSV writer fail with ENOSPC after ``rows`` rows, as a full disk does."""
    import errno

    real = csv.writer

    class Full:
        def __init__(self, fh):
            self.inner, self.n = real(fh), 0

        def writerow(self, row):
            self.n += 1
            if self.n > rows:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.inner.writerow(row)

    monkeypatch.setattr("hpcxtal.store.formats.csv.writer", Full)


def test_csv_export_on_a_full_disk_keeps_the_previous_file(synthetic, tmp_path, monkeypatch):
    import os

    dest = write_csv(tmp_path / "out.csv", synthetic(3))
    before = dest.read_bytes()
    _disk_full_after(monkeypatch, 5)
    with pytest.raises(OSError, match="No space left"):
        write_csv(dest, synthetic(20))
    assert dest.read_bytes() == before and os.listdir(tmp_path) == ["out.csv"]


def test_cif_export_failure_leaves_no_folder(sacada, tmp_path, monkeypatch):
    import ase.io

    table, _ = sacada
    calls = []

    def failing(path, atoms, **kw):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        real(path, atoms, **kw)

    real = ase.io.write
    monkeypatch.setattr(ase.io, "write", failing)
    with pytest.raises(OSError):
        export_table(table.take(np.arange(3)), "cif", tmp_path / "cifs")
    assert list(tmp_path.iterdir()) == []
