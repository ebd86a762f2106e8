"""Representation-space refinement (Algorithm 1) on real rows."""
import dataclasses

import numpy as np
import pytest

import torch

from hpcxtal.crystal.freevars import ANGLE, COORD, LENGTH
from hpcxtal.descriptor.batch import build_batch, rows_from_R
from hpcxtal.descriptor.target import Environment
from hpcxtal.refine.represent import (RefineConfig, _restart_noise, plan_batches,
                                      refine_batch, refine_table)
from hpcxtal.refine.status import RefineStatus
from hpcxtal.store.table import Table
from hpcxtal.store.formats import read_csv

CFG = RefineConfig(max_steps=60, restarts=2)


@pytest.fixture(scope="module")
def rows(generated_csv):
    table, _ = read_csv(generated_csv)
    return table.take(np.arange(24))


def test_loss_decreases_on_every_sample_of_a_mixed_batch(rows):
    env = Environment("graphite")
    batch = build_batch(rows)
    before = env.loss(batch, batch.R0).detach().numpy()
    assert len(set(rows["spg"].tolist())) > 5  # many space groups share the batch
    result = refine_table(rows, CFG)
    assert np.all(result.loss < before)


def test_refinement_is_reproducible_and_independent_of_the_batch(rows):
    a = refine_table(rows, CFG)
    b = refine_table(rows, CFG)
    np.testing.assert_array_equal(a.cell, b.cell)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    small = dataclasses.replace(CFG, max_batch_atoms=1)  # one row per batch
    c = refine_table(rows, small)
    np.testing.assert_allclose(c.cell, a.cell, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(c.valid, a.valid)


def test_a_broken_row_does_not_affect_the_others(rows):
    env = Environment("graphite")
    good = rows.take(np.arange(6))
    clean = refine_batch(build_batch(good), np.asarray(good["id"]), env, CFG)
    broken = build_batch(good)
    R0 = broken.R0.clone()
    R0[2, 0] = float("nan")  # a row whose first free variable is NaN
    broken = dataclasses.replace(broken, R0=R0)
    R, loss, valid, steps, status, reason = refine_batch(broken, np.asarray(good["id"]), env, CFG)
    assert status[2] == RefineStatus.FAILED and not valid[2]
    assert reason[2] == "non-finite coordinates at step 0"
    assert [reason[k] for k in (0, 1, 3, 4, 5)] == [""] * 5
    others = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(R[others].numpy(), clean[0][others].numpy(), rtol=1e-9, atol=1e-12)
    assert [status[k] for k in others] == [clean[4][k] for k in others]


def test_bounds_hold(rows):
    result = refine_table(rows, CFG)
    assert np.all((result.cell[:, :3] >= 1.5) & (result.cell[:, :3] <= 50))
    assert np.all((result.cell[:, 3:] >= 30) & (result.cell[:, 3:] <= 150))
    occupied = rows["wps"] >= 0
    assert np.all((result.xyz[occupied] >= 0) & (result.xyz[occupied] < 1))


def test_batches_respect_the_atom_budget():
    atoms = np.array([10, 20, 30, 500, 5, 5])
    batches = plan_batches(atoms, 60)
    assert [list(b) for b in batches] == [[0, 1, 2], [3], [4, 5]]


def test_a_row_valid_at_some_check_ends_valid(sacada):
    """SACADA rows perturbed (lengths and angles 5 %, free coordinates 0.03) that are still
    valid at the input end valid, although the loss pulls some of them off validity."""
    table, _ = sacada
    batch = build_batch(table)
    u = torch.from_numpy(np.random.default_rng(7).uniform(-1.0, 1.0, batch.R0.shape))
    R = torch.where(batch.kind == COORD, batch.R0 + 0.03 * u, batch.R0)
    R = torch.where((batch.kind == LENGTH) | (batch.kind == ANGLE), R * (1 + 0.05 * u), R)
    cols = dict(table.columns)
    cols["cell"], cols["xyz"] = rows_from_R(batch, R)
    moved = Table(cols, None, dict(table.attrs))
    env = Environment("graphite")
    start_valid = env.validity(batch, R).numpy()
    assert 0 < start_valid.sum() < len(table)
    kept = moved.take(np.flatnonzero(start_valid))
    result = refine_table(kept, CFG)
    assert result.valid.all()


def test_restart_noise_grows_with_the_restart_number():
    cfg = RefineConfig(restarts=4, seed=3)
    ids, width = np.array([5, 5, 9]), 6
    first = _restart_noise(ids, np.array([1, 4, 1]), width, cfg)
    again = _restart_noise(ids, np.array([1, 4, 1]), width, cfg)
    np.testing.assert_array_equal(first, again)  # a function of (seed, id, restart) only
    unit = np.random.default_rng([3, 5, 4]).standard_normal(width)
    np.testing.assert_allclose(first[1], unit)  # the last restart gets the full sigma
    np.testing.assert_allclose(first[0], 0.25 * np.random.default_rng([3, 5, 1]).standard_normal(width))
    assert not np.allclose(first[0], first[2])  # rows differ by id


def test_rows_do_not_depend_on_when_their_neighbour_lists_were_searched(rows):
    """A row's list is searched again only when the row may have crossed the skin, and
    rows that stop take their pairs out of the batch: with a skin so wide that rows are
    rarely searched again, every number comes out the same."""
    part = rows.take(np.arange(12))
    narrow = refine_table(part, CFG)
    wide = refine_table(part, dataclasses.replace(CFG, skin_A=4.0))
    for name in ("cell", "xyz", "loss", "steps", "valid"):
        np.testing.assert_array_equal(getattr(narrow, name), getattr(wide, name), err_msg=name)
    assert narrow.status == wide.status
