import os

import h5py
import numpy as np
import pytest

from hpcxtal.store.hdf5 import (StoreError, atomic_path, file_summary, read_table, verify_file,
                                write_table)
from hpcxtal.store.table import Table, str_array


def test_round_trip_keeps_every_column_structure_and_quarantine(sacada, tmp_path):
    table, quarantine = sacada
    path = write_table(tmp_path / "t.h5", table, kind="pool", quarantine=quarantine,
                       campaign_id="abc", sources=["x", "y"])
    back, back_q = read_table(path)
    assert sorted(back.columns) == sorted(table.columns)
    for name in table.columns:
        if back[name].dtype == object:
            assert list(back[name]) == list(table[name]), name
        else:
            assert np.array_equal(back[name], table[name], equal_nan=back[name].dtype.kind == "f")
    assert np.array_equal(back.structures.frac, table.structures.frac)
    assert np.array_equal(back_q["reason"], quarantine["reason"])
    attrs = file_summary(path)["attrs"]
    assert attrs["kind"] == "pool" and attrs["n_rows"] == len(table)
    assert attrs["campaign_id"] == "abc" and "cell" in attrs["units"]
    assert attrs["schema_version"] == 2 and attrs["hpcxtal_version"]


def test_empty_table_round_trips(synthetic, tmp_path):
    empty = synthetic(3).take(np.array([], dtype=int))
    back, q = read_table(write_table(tmp_path / "e.h5", empty, kind="pool"))
    assert len(back) == 0 and q is None


def test_carried_attributes_do_not_override_file_facts(synthetic, tmp_path):
    table = synthetic(10)
    table.attrs.update({"kind": "pool", "n_rows": 999, "source": "pool.h5"})
    path = write_table(tmp_path / "s.h5", table, kind="shard")
    attrs = file_summary(path)["attrs"]
    assert attrs["kind"] == "shard" and attrs["n_rows"] == 10 and attrs["source"] == "pool.h5"
    assert verify_file(path) is None


def test_truncated_file_is_detected_with_its_name(synthetic, tmp_path):
    path = write_table(tmp_path / "t.h5", synthetic(5000), kind="pool")
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(StoreError, match=str(path)):
        read_table(path)
    assert str(path) in verify_file(path)


def test_corrupted_bytes_are_detected(synthetic, tmp_path):
    path = write_table(tmp_path / "t.h5", synthetic(5000), kind="pool")
    with h5py.File(path, "r") as f:
        offset = f["xyz"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 100)
        data = bytearray(fh.read(64))
        fh.seek(offset + 100)
        fh.write(bytes(b ^ 0xFF for b in data))
    with pytest.raises(StoreError, match="t.h5"):
        read_table(path)


def test_modified_data_fails_the_checksum(synthetic, tmp_path):
    path = write_table(tmp_path / "t.h5", synthetic(50), kind="pool")
    with h5py.File(path, "r+") as f:  # a writer that bypasses hpcxtal
        f["cell"][0, 0] = 99.0
    with pytest.raises(StoreError, match="checksum mismatch"):
        read_table(path)


def test_foreign_and_missing_files(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(StoreError, match="not an hpcxtal table"):
        read_table(other)
    with pytest.raises(StoreError, match="no such file"):
        read_table(tmp_path / "nothing.h5")
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(StoreError, match="unreadable or corrupted"):
        read_table(text)


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_write_failure_keeps_previous_file(synthetic, tmp_path):
    target = write_table(tmp_path / "t.h5", synthetic(5), kind="pool")
    unwritable = Table({"id": np.arange(2), "bad": np.array([{}, {}], dtype=object)})
    with pytest.raises(TypeError):
        write_table(target, unwritable, kind="pool")
    assert verify_file(target) is None
    assert sorted(os.listdir(tmp_path)) == ["t.h5"]


def test_table_rejects_ragged_columns():
    with pytest.raises(ValueError, match="differ in length"):
        Table({"id": np.arange(3), "origin": str_array(["a", "b"])})


def test_checksum_covers_the_kind_and_row_count(synthetic, tmp_path):
    path = write_table(tmp_path / "t.h5", synthetic(5), kind="refine")
    with h5py.File(path, "r+") as f:  # relabelled by hand: a refine table passed as a pool
        f.attrs["kind"] = "pool"
    with pytest.raises(StoreError, match="checksum mismatch"):
        read_table(path)


def test_files_from_before_the_attribute_checksum_still_verify(synthetic, tmp_path):
    from hpcxtal.data import SACADA_PATH
    from hpcxtal.store.hdf5 import table_checksum

    assert "sha256_scope" not in file_summary(SACADA_PATH)["attrs"]
    assert verify_file(SACADA_PATH) is None
    table = synthetic(5)
    path = write_table(tmp_path / "t.h5", table, kind="pool")
    with h5py.File(path, "r+") as f:  # as an older hpcxtal wrote it
        del f.attrs["sha256_scope"]
        f.attrs["sha256"] = table_checksum(table)
    assert verify_file(path) is None


def test_require_kind_names_the_file_and_what_is_needed(synthetic, tmp_path):
    from hpcxtal.store.hdf5 import require_kind

    path = write_table(tmp_path / "r.h5", synthetic(3), kind="refine")
    require_kind(path, ("refine", "rounds"), "topology")
    with pytest.raises(StoreError, match=r"r.h5: a 'refine' table, but merge needs 'relax'"):
        require_kind(path, ("relax",), "merge")


def test_temporary_names_carry_pid_and_host(tmp_path):
    import socket

    from hpcxtal.store.hdf5 import temp_name

    assert temp_name(tmp_path / "x.h5").name == f".x.h5.tmp-{os.getpid()}@{socket.gethostname()}"


def test_atomic_dir_swaps_a_whole_folder_and_never_deletes_foreign_files(tmp_path):
    from hpcxtal.store.hdf5 import atomic_dir

    out = tmp_path / "cifs"
    with atomic_dir(out, (".cif",)) as tmp:
        (tmp / "1.cif").write_text("one")
    assert os.listdir(out) == ["1.cif"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out, (".cif",)) as tmp:
            (tmp / "2.cif").write_text("two")
            raise RuntimeError("disk full")
    assert os.listdir(out) == ["1.cif"] and sorted(os.listdir(tmp_path)) == ["cifs"]
    with atomic_dir(out, (".cif",)) as tmp:
        (tmp / "2.cif").write_text("two")
    assert os.listdir(out) == ["2.cif"] and sorted(os.listdir(tmp_path)) == ["cifs"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        with atomic_dir(out, (".cif",)):
            pass
    assert sorted(os.listdir(out)) == ["2.cif", "notes.txt"]


def test_full_disk_while_writing_a_table_keeps_the_previous_file(synthetic, tmp_path, monkeypatch):
    import errno

    import hpcxtal.store.hdf5 as hdf5

    target = write_table(tmp_path / "t.h5", synthetic(5), kind="pool")
    before = target.read_bytes()

    class Full:
        def __init__(self, path, mode):
            self.fh = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hdf5, "open", Full, raising=False)
    with pytest.raises(OSError, match="No space left on device") as err:
        write_table(target, synthetic(50), kind="pool")
    assert err.value.filename == str(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["t.h5"]


def test_a_real_full_disk_is_an_error_not_a_crash(tmp_path):
    """On a 48 kB tmpfs (needs root and mount): importing SACADA (about 300 kB) fails
    with one line, leaves nothing, and does not crash HDF5 (it segfaulted before)."""
    import subprocess
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs",
                                            str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        done = subprocess.run([sys.executable, "-m", "hpcxtal.cli", "import", "sacada", "-o",
                               str(disk / "p.h5"), "-q"], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip() == (f"hpcxtal import: error: {disk / 'p.h5'}: No space left "
                                       "on device; free some space or write elsewhere")
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
