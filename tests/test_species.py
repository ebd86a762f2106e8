"""Rows with an element per Wyckoff site: rock-salt NaCl (Fm-3m 4a/4b) and CsCl
(Pm-3m 1a/1b) through row, table, HDF5, import/export and every campaign stage."""
import json

import numpy as np
import pytest
import torch

from hpcxtal.crystal.row import DecodeError, decode, from_structure, to_atoms, to_pyxtal
from hpcxtal.store.table import Table

NA, CL, CS = 11, 17, 55


def nacl_row(a: float = 5.64):
    """Rock salt: Na on 4a, Cl on 4b (pyxtal's indices in Fm-3m)."""
    from hpcxtal.crystal.symmetry import space_group

    by_label = {wp.label: wp.index for wp in space_group(225).wyckoff}
    return decode(225, np.array([a, a, a, 90, 90, 90]), [by_label["4a"], by_label["4b"]],
                  [[0, 0, 0], [0.5, 0.5, 0.5]], species=[NA, CL])


def cscl_row(a: float = 4.12):
    from hpcxtal.crystal.symmetry import space_group

    by_label = {wp.label: wp.index for wp in space_group(221).wyckoff}
    return decode(221, np.array([a, a, a, 90, 90, 90]), [by_label["1a"], by_label["1b"]],
                  [[0, 0, 0], [0.5, 0.5, 0.5]], species=[CS, CL])


def test_row_expands_each_site_with_its_element():
    row = nacl_row()
    assert row.elements() == ["Na", "Cl"] and row.species.tolist() == [NA, CL] + [0] * 6
    atoms = to_atoms(row)
    assert atoms.get_chemical_formula() == "Cl4Na4"
    assert to_pyxtal(row).formula.replace(" ", "") in ("Na4Cl4", "Cl4Na4")
    back = from_structure(atoms, elements=["Na", "Cl"])
    assert back.spg == 225 and sorted(back.elements()) == ["Cl", "Na"]
    assert np.allclose(back.cell, row.cell)
    with pytest.raises(DecodeError, match="campaign's elements are C"):
        from_structure(atoms)  # a carbon campaign keeps its gate
    with pytest.raises(DecodeError, match="atomic number 0 is no element"):
        decode(225, row.cell, row.wps[:2], row.xyz[:2], species=[NA, 0])


def test_carbon_is_the_default_and_old_files_read_as_carbon(sacada, tmp_path):
    import h5py

    from hpcxtal.store.hdf5 import read_table, table_checksum, write_table

    table, _ = sacada
    assert np.array_equal(table["species"], np.where(table["wps"] >= 0, 6, 0))
    # A version-1 file: no species dataset, checksum over what it stored.
    old = table.take(np.arange(5))
    path = write_table(tmp_path / "v1.h5", old, kind="pool")
    with h5py.File(path, "r+") as f:
        del f["species"]
        f.attrs["schema_version"] = 1
        stored = {k: v for k, v in old.columns.items() if k != "species"}
        f.attrs["sha256"] = table_checksum(_raw(stored, old.structures),
                                           None, {**dict(f.attrs), "schema_version": 1})
    back, _ = read_table(path)
    assert np.array_equal(back["species"], old["species"])
    mixed = Table.from_rows([nacl_row(), cscl_row()], [1, 2], ["a", "b"])
    back, _ = read_table(write_table(tmp_path / "m.h5", mixed, kind="pool"))
    assert back.row(0).elements() == ["Na", "Cl"] and back.row(1).elements() == ["Cs", "Cl"]


def _raw(columns, structures):
    """A Table holding exactly ``columns`` (no species added), for a version-1 checksum."""
    table = object.__new__(Table)
    table.columns, table.structures, table.attrs = dict(columns), structures, {}
    return table


def test_csv_cif_extxyz_and_ase_db_keep_the_elements(generated_csv, tmp_path):
    from hpcxtal.store.formats import export_table, import_files, read_csv

    mixed = Table.from_rows([nacl_row(), cscl_row()], [1, 2], ["a", "b"])
    export_table(mixed, "csv", tmp_path / "m.csv")
    header = (tmp_path / "m.csv").read_text().splitlines()[0]
    assert header.endswith("el0,el1,el2,el3,el4,el5,el6,el7")
    back, q = read_csv(tmp_path / "m.csv")
    assert len(q) == 0 and np.array_equal(back["species"], mixed["species"])
    # a carbon CSV keeps the 39-column layout
    carbon, _ = read_csv(generated_csv)
    export_table(carbon.take(np.arange(3)), "csv", tmp_path / "c.csv")
    assert "el0" not in (tmp_path / "c.csv").read_text().splitlines()[0]
    for fmt, name in (("cif", "cifs"), ("extxyz", "m.xyz"), ("ase", "m.db")):
        dest = export_table(mixed, fmt, tmp_path / name)
        files = sorted(dest.glob("*.cif")) if fmt == "cif" else [dest]
        table, q = import_files(files, elements=["Na", "Cl", "Cs"])
        assert len(table) == 2 and len(q) == 0, fmt
        got = sorted(tuple(sorted(table.row(i).elements())) for i in range(2))
        assert got == [("Cl", "Cs"), ("Cl", "Na")], fmt
        _, q = import_files(files)  # the default: carbon only
        assert len(q) == 2 and "campaign's elements are C" in q["reason"][0]


def test_batch_weights_each_atom_by_its_element():
    from hpcxtal.descriptor.batch import build_batch, rows_of_batch

    batch = build_batch([nacl_row(), cscl_row()])
    z = batch.atom_weight.round().long()
    assert torch.equal(torch.bincount(z, minlength=56)[[NA, CL, CS]], torch.tensor([4, 5, 1]))
    assert [r.elements() for r in rows_of_batch(batch, batch.R0)] == [["Na", "Cl"], ["Cs", "Cl"]]
    assert [r.elements() for r in rows_of_batch(batch.take([1]), batch.R0[[1]])] == [["Cs", "Cl"]]


def test_the_carbon_mace_model_refuses_other_elements_in_one_line():
    from hpcxtal.relax.engine import RelaxParams
    from hpcxtal.relax.models import ModelSetupError, load_model
    from hpcxtal.relax.table import relax_table

    table = Table.from_rows([nacl_row()], [1], ["a"])
    with pytest.raises(ModelSetupError, match="not Na, Cl; relax these rows with backend: chgnet"):
        relax_table(table, load_model("mace"), RelaxParams(), {6: 0.0})


def test_nacl_and_cscl_go_through_every_stage(tmp_path):
    """Import (CSV and CIF) -> shard -> refine (distance_matrix) -> rounds -> topology ->
    dedup -> relax (CHGNet, elemental references) -> merge, elements kept throughout."""
    from hpcxtal.campaign import Campaign, CampaignConfig
    from hpcxtal.layout import database_output, stage_output
    from hpcxtal.merge.database import MergeConfig, read_database
    from hpcxtal.refine.config import ObjectiveTerm, RefineConfig
    from hpcxtal.relax.config import RelaxConfig
    from hpcxtal.stages import PIPELINE, Resources
    from hpcxtal.store.formats import ImportConfig, export_table
    from hpcxtal.store.hdf5 import read_table
    from hpcxtal.store.shard import ShardConfig

    # Start a little off the relaxed geometry so refinement and relaxation have work.
    export_table(Table.from_rows([nacl_row(5.9)], [0], ["nacl"]), "csv", tmp_path / "nacl.csv")
    export_table(Table.from_rows([cscl_row(4.3)], [0], ["cscl"]), "cif", tmp_path / "cifs")
    to_atoms(nacl_row()).write(tmp_path / "ref.cif")
    objective = [ObjectiveTerm(name="distance_matrix", settings={
        "reference": str(tmp_path / "ref.cif"), "mode": "histogram", "cutoff_A": 5.0,
        "valid_rmse_A": 0.3})]  # valid: NaCl's distances; CsCl (2 atoms, not 8) is not
    cfg = CampaignConfig(
        name="salts",
        import_=ImportConfig(inputs=[str(tmp_path / "nacl.csv"), str(tmp_path / "cifs" / "0.cif")],
                             elements=["Na", "Cl", "Cs"]),
        shard=ShardConfig(n_shards=1),
        refine=RefineConfig(objective=objective, max_steps=30, restarts=1),
        relax=RelaxConfig(backend="chgnet", max_steps=40, steps_per_atom=0),
        merge=MergeConfig(training=None))
    camp = Campaign.create(tmp_path / "camp", cfg)
    for spec in PIPELINE:
        if spec.enabled(cfg):
            spec.run(camp, resources=Resources(workers=1))
    for stage in ("refine", "rounds", "topology", "relax"):
        table, _ = read_table(stage_output(stage, camp.root, 0))
        got = sorted(tuple(sorted(table.row(i).elements())) for i in range(len(table)))
        assert got == [("Cl", "Cs"), ("Cl", "Na")], stage
    relaxed, _ = read_table(stage_output("relax", camp.root, 0))
    nacl = [i for i in range(2) if relaxed.row(i).spg == 225]
    cscl = [i for i in range(2) if relaxed.row(i).spg == 221]
    assert np.allclose(relaxed["cell"][nacl, :3], 5.64)  # refined onto the target
    assert list(relaxed["status"][cscl]) == ["skipped"]  # another atom count: not valid
    assert relaxed["status"][nacl[0]] in ("converged", "not_converged")
    assert json.loads(relaxed.attrs["elemental_references_eV_per_atom"]).keys() == {"Na", "Cl"}
    assert sorted(set(relaxed.structures.atoms(nacl[0]).get_chemical_symbols())) == ["Cl", "Na"]
    # above the elements' standard states: rock salt's formation energy (about -2 eV/atom)
    assert -3.0 < relaxed["e_rel"][nacl[0]] < -1.0, relaxed["e_rel"]
    db, _ = read_database(database_output(camp.root))
    assert len(db) == 2
    for i in range(2):
        assert sorted(set(db.atoms(i).get_chemical_symbols())) == sorted(db.row(i).elements())
    assert sorted(tuple(sorted(db.row(i).elements())) for i in range(2)) == \
        [("Cl", "Cs"), ("Cl", "Na")]


def test_chgnet_energy_objective_is_differentiable_and_relaxes_rock_salt():
    """The ``energy`` objective through CHGNet: the loss is the formation energy per atom
    (elemental references), its gradient in R matches a central difference and agrees
    with CHGNet's own stress, and refinement moves a stretched NaCl cell down in energy."""
    import dataclasses

    from hpcxtal.descriptor.batch import build_batch
    from hpcxtal.refine.config import EnergySettings, ObjectiveTerm, RefineConfig
    from hpcxtal.refine.energy import EnergyObjective
    from hpcxtal.refine.represent import refine_table

    objective = EnergyObjective(EnergySettings(backend="chgnet"))
    rows = [nacl_row(5.9), cscl_row(4.3)]
    batch = build_batch(rows)
    R = batch.new_R()
    loss = objective.loss(batch, R)
    assert objective.references.keys() == {NA, CL, CS}
    energy = objective.model.evaluate([to_atoms(r) for r in rows]).energy.numpy()
    expected = [energy[0] / 8 - (objective.references[NA] + objective.references[CL]) / 2,
                energy[1] / 2 - (objective.references[CS] + objective.references[CL]) / 2]
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-6)
    loss.sum().backward()
    h = 1e-4  # central difference of NaCl's lattice length (its only free variable)
    plus, minus = R.detach().clone(), R.detach().clone()
    plus[0, 0] += h
    minus[0, 0] -= h
    numeric = (objective.loss(batch, plus)[0] - objective.loss(batch, minus)[0]).item() / (2 * h)
    assert numeric == pytest.approx(R.grad[0, 0].item(), rel=1e-4, abs=1e-7)
    assert R.grad[0, 0] > 0  # stretched: shrinking lowers the energy
    # Refinement reads losses as >= 0: a reference below these compounds' energies.
    table = Table.from_rows(rows, [0, 1], ["nacl", "cscl"])
    cfg = dataclasses.replace(RefineConfig(), max_steps=15, restarts=0, objective=[
        ObjectiveTerm(name="energy", settings={"backend": "chgnet",
                                               "reference_eV_per_atom": -10.0})])
    result = refine_table(table, cfg)
    start = energy / np.array([8, 2]) + 10.0
    np.testing.assert_array_less(result.loss, start - 1e-3)
    assert result.cell[0, 0] < 5.9 and result.cell[1, 0] < 4.3
