"""The structures path: a structure that fits a row becomes a row; one that needs more
than 8 Wyckoff sites goes through the campaign as a structure (not refined), to the
database, never dropped."""
from __future__ import annotations

import numpy as np
import pytest

from hpcxtal.campaign import Campaign, CampaignConfig, ImportConfig, RelaxConfig, ShardConfig
from hpcxtal.crystal.row import TooManySites, from_structure
from hpcxtal.layout import database_output, stage_output
from hpcxtal.merge.database import read_database
from hpcxtal.refine.config import RefineConfig, RoundsConfig
from hpcxtal.report import accounting
from hpcxtal.stages import PIPELINE
from hpcxtal.store.formats import import_files
from hpcxtal.store.hdf5 import read_table
from hpcxtal.store.table import structure_rows

from test_relax import tiny_mace


def _same_positions(a, b, tol: float = 1e-6) -> bool:
    """Same cell and the same fractional positions (periodically, in order)."""
    delta = a.get_scaled_positions() - b.get_scaled_positions()
    return bool(np.allclose(a.cell, b.cell, atol=tol) and np.all(np.abs(delta - np.round(delta)) < tol))


@pytest.fixture(scope="module")
def structures_file(sacada, tmp_path_factory):
    """An extxyz file (no symmetry information: every structure is P1 as written) of a
    40-atom SACADA crystal that needs more than 8 Wyckoff sites, the smallest SACADA
    crystal, which fits a row, and the 40-atom crystal stretched by 50 % (no atom keeps
    CN 3: an invalid structure row)."""
    import ase.io

    table, quarantine = sacada
    big = quarantine.structures.atoms(int(np.flatnonzero(quarantine.structures.natoms == 40)[0]))
    small = table.structures.atoms(int(np.argmin(table.structures.natoms)))
    path = tmp_path_factory.mktemp("structures") / "p1.extxyz"
    stretched = big.copy()
    stretched.set_cell(big.cell * 1.5, scale_atoms=True)
    ase.io.write(path, [big, small, stretched], format="extxyz")
    return path, big, small


def test_a_structure_with_too_many_sites_becomes_a_structure_row(structures_file):
    path, big, small = structures_file
    with pytest.raises(TooManySites) as err:
        from_structure(big)
    assert err.value.n_sites > 8
    table, quarantine = import_files([path])
    assert len(table) == 3 and len(quarantine) == 0
    as_structure = structure_rows(table)
    assert as_structure.tolist() == [True, False, True]
    assert table.structures.natoms[0] == 40 and table["spg"][0] == err.value.spg
    assert _same_positions(table.atoms(0), big)
    assert table.row(1).n_atoms() == len(small)  # the small one is an ordinary row


def test_structure_rows_survive_a_table_file(structures_file, tmp_path):
    from hpcxtal.store.hdf5 import write_table

    table, _ = import_files([structures_file[0]])
    write_table(tmp_path / "pool.h5", table, kind="pool")
    again, quarantine = import_files([tmp_path / "pool.h5"])
    assert len(again) == 3 and len(quarantine) == 0
    assert structure_rows(again).tolist() == [True, False, True]
    assert _same_positions(again.atoms(0), table.atoms(0))


def test_a_40_atom_structure_goes_through_a_campaign_to_the_database(structures_file, tmp_path):
    path, big, _ = structures_file
    model = tiny_mace(tmp_path / "tiny.model")
    cfg = CampaignConfig(name="p1", import_=ImportConfig(inputs=[str(path)]),
                         shard=ShardConfig(n_shards=1), refine=RefineConfig(max_steps=30),
                         rounds=RoundsConfig(n_rounds=2),
                         relax=RelaxConfig(backend="mace", model=str(model), max_steps=3,
                                           steps_per_atom=0, fmax_eV_per_A=1e3))
    camp = Campaign.create(tmp_path / "c", cfg)
    for spec in PIPELINE:
        spec.run(camp)
    refined, _ = read_table(stage_output("rounds", camp.root, 0))
    k, bad = (int(np.flatnonzero(refined["id"] == i)[0]) for i in (0, 2))
    assert structure_rows(refined)[[k, bad]].all()
    assert (refined["refine_status"][[k, bad]] == "structure").all()
    assert (refined["steps"][[k, bad]] == 0).all() and (refined["round"][[k, bad]] == 1).all()
    assert refined["valid"][k]  # a SACADA sp2 crystal keeps CN 3 on every atom
    assert _same_positions(refined.atoms(k), big)  # not refined
    # the stretched one is invalid; the second round did not touch it
    assert not refined["valid"][bad] and "CN" in refined["refine_reason"][bad]
    assert np.allclose(refined.atoms(bad).cell, big.cell * 1.5)
    db, quarantine = read_table(database_output(camp.root))
    assert sorted(db["id"].tolist()) == [0, 1, 2] and len(quarantine) == 0
    assert db["class"][int(np.flatnonzero(db["id"] == 2)[0])] == "invalid"
    i = int(np.flatnonzero(db["id"] == refined["id"][k])[0])
    assert db.structures.natoms[i] == 40  # relaxed as the structure it is
    assert db["topology"][i] != "" and db["class"][i] not in ("invalid", "failed")
    books = accounting(*read_database(database_output(camp.root)), 3)
    assert books.closes, books.problems
