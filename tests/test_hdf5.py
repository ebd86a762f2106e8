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
    assert list(back.columns) == list(table.columns)
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
    assert attrs["schema_version"] == 1 and attrs["hpcxtal_version"]


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
