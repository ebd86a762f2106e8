import numpy as np
import pytest

from hpcxtal.store.hdf5 import read_table
from hpcxtal.store.shard import plan_shards, row_cost, write_shards


def test_million_rows_shard_without_loss_and_balanced(synthetic, tmp_path):
    table = synthetic(10**6)
    paths = write_shards(table, 16, tmp_path)
    assert [p.name for p in paths] == [f"shard-{i:04d}.h5" for i in range(16)]
    parts = [read_table(p)[0] for p in paths]
    ids = np.concatenate([p["id"] for p in parts])
    assert len(ids) == 10**6 and len(np.unique(ids)) == 10**6
    costs = np.array([row_cost(p["spg"], p["wps"]).sum() for p in parts])
    assert costs.max() / costs.mean() < 1.10 and costs.min() / costs.mean() > 0.90
    # Rows stay grouped by space group: each shard is a sorted run.
    for p in parts:
        assert np.all(np.diff(p["spg"].astype(int)) >= 0)
    boundaries = [(p["spg"][0], p["spg"][-1]) for p in parts]
    assert all(a[1] <= b[0] for a, b in zip(boundaries, boundaries[1:]))


def test_row_cost_is_atoms_times_free_variables():
    # graphite 194: 2b + 2c = 4 atoms; free: a, c (no free coordinates)
    wps = np.array([[10, 9, -1, -1, -1, -1, -1, -1]])
    assert row_cost(np.array([194]), wps)[0] == 4 * 2
    # P1 general position: 1 atom, 6 lattice + 3 coordinates
    assert row_cost(np.array([1]), np.array([[0] + [-1] * 7]))[0] == 9


def test_shard_count_errors(synthetic):
    table = synthetic(5)
    with pytest.raises(ValueError, match="at least 1"):
        plan_shards(table, 0)
    with pytest.raises(ValueError, match="5 rows into 6"):
        plan_shards(table, 6)
    parts = plan_shards(table, 5)
    assert sorted(np.concatenate(parts)) == list(range(5))
