import numpy as np
import pytest

from hpcxtal.store.hdf5 import StoreError
from hpcxtal.store.lineage import check_pool_matches
from hpcxtal.store.table import str_array


def test_pool_must_be_the_one_the_rows_came_from(synthetic):
    pool = synthetic(6, seed=1)
    pool.columns["origin"] = str_array(f"a.csv:{k + 2}" for k in range(6))
    parts = [pool.take([3, 4, 5]), pool.take([0, 1, 2])]
    check_pool_matches(pool, "pool.h5", parts)
    with pytest.raises(StoreError, match=r"missing ids \[5\]"):
        check_pool_matches(pool, "pool.h5", [pool.take([0, 1, 2, 3, 4])])
    unrelated = synthetic(6, seed=2)  # same ids 0-5, other rows
    unrelated.columns["origin"] = str_array(f"b.csv:{k + 2}" for k in range(6))
    with pytest.raises(StoreError, match="pool.h5: not the pool these rows came from"):
        check_pool_matches(unrelated, "pool.h5", parts)
    same_origins = synthetic(6, seed=2)  # e.g. two samples of one generator
    same_origins.columns["origin"] = pool["origin"]
    same_origins.columns["spg"] = np.where(pool["spg"] == 1, 2, 1)
    with pytest.raises(StoreError, match="space group"):
        check_pool_matches(same_origins, "pool.h5", parts)
    moved = synthetic(6, seed=1)
    moved.columns["origin"] = pool["origin"]
    moved.columns["wps"] = np.roll(pool["wps"], 1, axis=1)
    with pytest.raises(StoreError, match="Wyckoff positions differ"):
        check_pool_matches(moved, "pool.h5", parts)
