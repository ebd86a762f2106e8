"""The merge stage, the database, ``hpcxtal db`` and ``hpcxtal report``.

Relax outputs are made by the real pipeline (topology + relax with a tiny random MACE
model) on a few small SACADA rows; a loose fmax makes every relaxation converge at
once, so relaxed structures are the SACADA structures and their symmetry is known.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from hpcxtal.campaign import Campaign, CampaignConfig, ImportConfig, RelaxConfig, ShardConfig
from hpcxtal.cli import main
from hpcxtal.config import ConfigError
from hpcxtal.layout import database_output, shard_path, stage_output
from hpcxtal.report import accounting, write_report
from hpcxtal.merge.stage import merge_files
from hpcxtal.relax.stage import RelaxRunner
from hpcxtal.stages import PIPELINE, stage_spec
from hpcxtal.merge.database import MergeConfig, build_database, query, read_database
from hpcxtal.store.formats import quarantine_table
from hpcxtal.store.hdf5 import StoreError, file_summary, read_table, write_table
from hpcxtal.store.table import Structures, Table, str_array
from hpcxtal.topology.stage import topology_file

from test_relax import tiny_mace

N_ROWS = 8  # smallest SACADA rows; the pool adds one copy of a row and two undecodable rows


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache for the training structures' topology keys."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Small SACADA rows as refined rows (valid, round: one row invalid, some found in
    round 2), one row twice under another id, and two quarantined rows."""
    from hpcxtal.data import SACADA_PATH

    table, _ = read_table(SACADA_PATH)
    idx = np.argsort(table.structures.natoms, kind="stable")[:N_ROWS]
    small = table.take(np.append(idx, idx[0]))
    small.structures = None
    small.columns = {k: small[k] for k in ("id", "spg", "wps", "cell", "xyz", "origin")}
    small.columns["id"] = np.arange(N_ROWS + 1, dtype=np.uint64)
    small.columns["valid"] = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    small.columns["round"] = np.array([1, 1, 2, 1, 1, 2, 1, 1, 2], np.int8)
    quarantine = quarantine_table([N_ROWS + 1, N_ROWS + 2], ["csv:1", "csv:2"],
                                  ["space group 0 out of range", "Wyckoff index 9 not in group"],
                                  ["", ""])
    path = tmp_path_factory.mktemp("pool") / "pool.h5"
    write_table(path, small, kind="pool", quarantine=quarantine)
    return path


@pytest.fixture(scope="module")
def relax_cfg(tmp_path_factory):
    model = tiny_mace(tmp_path_factory.mktemp("model") / "tiny.model")
    return RelaxConfig(backend="mace", model=str(model), max_steps=3, steps_per_atom=0,
                       fmax_eV_per_A=1e3)


@pytest.fixture(scope="module")
def campaign(pool, relax_cfg, cache, tmp_path_factory):
    """A 2-shard campaign run through topology, relax and merge."""
    cfg = CampaignConfig(name="m", import_=ImportConfig(inputs=[str(pool)]),
                         shard=ShardConfig(n_shards=2), relax=relax_cfg)
    camp = Campaign.create(tmp_path_factory.mktemp("camp") / "c", cfg)
    stage_spec("import").run(camp)
    stage_spec("shard").run(camp)
    for i in range(2):
        topology_file(shard_path(camp.shard_dir, i), stage_output("topology", camp.root, i), cfg.topology,
                      workers=1)
    stage_spec("dedup").run(camp)
    stage_spec("relax").run(camp, None)
    stage_spec("merge").run(camp)
    return camp


def _same_file_data(a, b) -> None:
    ta, qa = read_table(a)
    tb, qb = read_table(b)
    assert list(ta.columns) == list(tb.columns)
    for name in ta.columns:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)
    for f in ("natoms", "lattice", "frac", "numbers"):
        np.testing.assert_array_equal(getattr(ta.structures, f), getattr(tb.structures, f))
    for name in qa.columns:
        np.testing.assert_array_equal(qa[name], qb[name])


def test_database_columns_order_and_symmetry(campaign):
    db, quarantine = read_database(database_output(campaign.root))
    pool, pool_q = read_table(campaign.pool_path)
    assert sorted(db["id"].tolist()) == sorted(pool["id"].tolist())
    assert quarantine["id"].tolist() == sorted(pool_q["id"].tolist())
    e = db["e_rel"]
    finite = np.isfinite(e)
    assert not finite[np.argmin(finite):].any()  # NaN last
    assert (np.diff(e[finite]) >= 0).all()
    conv = db["status"] == "converged"
    assert (db.structures.natoms[~conv] == 0).all() and (db.structures.natoms[conv] > 0).all()
    # relaxations did not move (fmax 1e3): the relaxed symmetry is the row's own
    np.testing.assert_array_equal(db["spg_relaxed"][conv], db["spg"][conv])
    assert all(w for w in db["wyckoff_relaxed"][conv])
    # every unique converged structure is a SACADA structure: all are in the training set
    assert db["in_training"][db["unique"]].all()
    assert all(m.startswith("sacada:") for m in db["training_match"][db["unique"]])
    # re-validated after relaxation: same net, 3-D, motif kept, a known SACADA phase
    np.testing.assert_array_equal(db["topology_relaxed"][conv], db["topology"][conv])
    assert (db["dimension_relaxed"][conv] == 3).all() and db["motif_kept"][conv].all()
    assert db["relaxed_match"][conv].all() and (db["rms_displacement_A"][conv] < 1e-9).all()
    assert set(db["class"][db["unique"]]) == {"known"}
    assert all(k.startswith("sacada:") for k in db["known_phase"][conv])
    assert (db["known_phase"][~conv] == "").all() and db["valid_xtal"].all()
    assert set(db["status"]) <= {"converged", "skipped"}
    assert all(db["status_reason"][~conv])
    attrs = file_summary(database_output(campaign.root))["attrs"]
    assert attrs["kind"] == "database" and attrs["n_sampled"] == N_ROWS + 3
    assert attrs["model_backend"] == "mace"


def test_shard_merge_equals_single_file_merge(campaign, tmp_path):
    parts = [read_table(stage_output("relax", campaign.root, i)) for i in range(2)]
    single = Table.concat([parts[1][0], parts[0][0]])  # another order, one file
    write_table(tmp_path / "all.h5", single, kind="relax", **parts[0][0].attrs)
    assert main(["merge", str(tmp_path / "all.h5"), "-o", str(tmp_path / "db.h5"),
                 "--pool", str(campaign.pool_path), "-q"]) == 0
    _same_file_data(tmp_path / "db.h5", database_output(campaign.root))


def test_sharded_campaign_matches_single_process_pipeline(campaign, pool, relax_cfg, tmp_path):
    cfg = campaign.config
    topology_file(pool, tmp_path / "topo.h5", cfg.topology, workers=1)
    RelaxRunner(relax_cfg).run(tmp_path / "topo.h5", tmp_path / "relax.h5")
    merge_files([tmp_path / "relax.h5"], tmp_path / "db.h5", cfg.merge, cfg.topology,
                pool=pool)
    one, q1 = read_database(tmp_path / "db.h5")
    sharded, q2 = read_database(database_output(campaign.root))
    # import renumbers ids from 0 in pool order: the ids of both runs are the same
    u1, u2 = one["unique"], sharded["unique"]
    assert one["id"][u1].tolist() == sharded["id"][u2].tolist()
    np.testing.assert_allclose(one["e_rel"][u1], sharded["e_rel"][u2], rtol=0, atol=1e-9)
    n = N_ROWS + 3
    assert accounting(one, q1, n).counts == accounting(sharded, q2, n).counts


def test_accounting_closes_exactly(campaign, capsys):
    db, quarantine = read_database(database_output(campaign.root))
    books = accounting(db, quarantine, N_ROWS + 3)
    assert books.closes, books.problems
    assert books.counts == {"new": 0, "known": N_ROWS - 1, "motif_lost": 0, "low_dimensional": 0,
                            "duplicate": 1, "invalid": 1, "failed": 0, "quarantined": 2}
    # the copied row is a duplicate of the original (topology or structure level)
    copy = int(np.flatnonzero(db["id"] == N_ROWS)[0])
    assert db["duplicate_of"][copy] == 0
    assert main(["report", str(campaign.root), "-q"]) == 0
    out = capsys.readouterr().out
    assert ("0 new + 7 known + 0 motif_lost + 0 low_dimensional + 1 duplicate + 1 invalid + "
            "0 failed + 2 quarantined = 11 of 11") in out
    assert f"N_unique {(db['status'] == 'converged').sum()} -> {N_ROWS - 1}" in out
    assert not accounting(db, quarantine, N_ROWS + 4).closes


def test_report_fails_when_a_row_is_lost(campaign, tmp_path, capsys):
    db, quarantine = read_database(database_output(campaign.root))
    attrs = file_summary(database_output(campaign.root))["attrs"]
    write_table(tmp_path / "lost.h5", db.take(np.arange(1, len(db))), kind="database",
                quarantine=quarantine, n_sampled=attrs["n_sampled"])
    assert main(["report", str(tmp_path / "lost.h5"), "-q"]) == 1
    assert "does not close: classes add up to 10, but 11 rows were sampled" in capsys.readouterr().err


def test_merge_is_idempotent_and_skips_when_current(campaign, tmp_path):
    dest = database_output(campaign.root)
    before = file_summary(dest)["attrs"]["sha256"]
    shutil.copy(dest, tmp_path / "before.h5")
    assert stage_spec("merge").done(campaign, None)
    assert stage_spec("merge").run(campaign).skipped
    report = stage_spec("merge").run(campaign, force=True)
    assert not report.skipped
    assert file_summary(dest)["attrs"]["sha256"] == before
    _same_file_data(dest, tmp_path / "before.h5")
    assert Campaign(campaign.root).manifest()["stages"]["merge"]["status"] == "done"


def _corrupt(path, dataset: str = "energy") -> None:
    """Overwrite the first bytes of ``dataset``'s first chunk on disk."""
    import h5py

    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(16))


def test_corrupted_relax_output_is_named(campaign, tmp_path, capsys):
    bad = tmp_path / "relax-0001.h5"
    shutil.copy(stage_output("relax", campaign.root, 1), bad)
    _corrupt(bad)
    with pytest.raises(StoreError, match="relax-0001.h5"):
        merge_files([stage_output("relax", campaign.root, 0), bad], tmp_path / "db.h5", MergeConfig())
    assert main(["merge", str(stage_output("relax", campaign.root, 0)), str(bad),
                 "-o", str(tmp_path / "db.h5")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err
    assert not (tmp_path / "db.h5").exists()
    # a shard given twice, and a pool row missing from the inputs
    with pytest.raises(StoreError, match="more than one row"):
        merge_files([stage_output("relax", campaign.root, 0)] * 2, tmp_path / "db.h5", MergeConfig())
    with pytest.raises(StoreError, match="missing ids"):
        merge_files([stage_output("relax", campaign.root, 0)], tmp_path / "db.h5", MergeConfig(),
                    pool=campaign.pool_path)


def test_campaign_merge_refuses_a_corrupted_shard(campaign, tmp_path):
    copy = Campaign(shutil.copytree(campaign.root, tmp_path / "c"))
    _corrupt(stage_output("relax", copy.root, 0), "e_rel")
    assert not stage_spec("merge").done(copy, None)
    with pytest.raises(FileNotFoundError, match=r"shard 0 .*relax-0000.h5"):
        stage_spec("merge").run(copy)


def _structure_table(images, keys, energies, status=None, reasons=None):
    """Hand-built relax output: ``images`` as relaxed structures, pre-relax ``keys``."""
    n = len(images)
    return Table({
        "id": np.arange(n, dtype=np.uint64), "spg": np.ones(n, np.int16),
        "wps": -np.ones((n, 8), np.int8), "cell": np.tile([5.0, 5, 5, 90, 90, 90], (n, 1)),
        "xyz": np.zeros((n, 8, 3)), "origin": str_array(f"t:{i}" for i in range(n)),
        "topology": str_array(keys), "dimension": np.full(n, 3, np.int8),
        "energy": np.asarray(energies, float), "e_rel": np.asarray(energies, float) + 1.0,
        "status": str_array(status or ["converged"] * n),
        "status_reason": str_array(reasons or [""] * n),
    }, Structures.from_atoms(images))


def test_structure_matcher_dedup_within_relaxed_topology_buckets(sacada):
    from pymatgen.io.ase import AseAtomsAdaptor

    from hpcxtal.topology.signature import atoms_signature

    table, _ = sacada
    a, b = (table.structures.atoms(i) for i in np.argsort(table.structures.natoms)[[0, 3]])
    copy = a * (2, 1, 1)  # a supercell, shifted and permuted: the same crystal
    copy.translate(copy.cell.cartesian_positions([0.13, 0.27, 0.41]))
    copy.wrap()
    copy = copy[np.random.default_rng(0).permutation(len(copy))]
    # 0: a; 1: its copy; 2: b, in a's bucket before relaxation; 3: a, lowest energy, in
    # another bucket before relaxation: buckets are the relaxed keys, so 3 meets 0 and 1
    images = [a, copy, b, a.copy()]
    rows = _structure_table(images, ["k1", "k1", "k1", "k2"], [0.2, 0.1, 0.3, 0.0])
    training = {atoms_signature(a).key: [("ref:a", AseAtomsAdaptor.get_structure(a))]}
    db, _ = build_database([(rows, None)], MergeConfig(), training, window_eV=1.25)
    by_id = {int(i): k for k, i in enumerate(db["id"])}
    assert db["id"].tolist() == [3, 1, 0, 2]  # by energy
    assert db["duplicate_of"][by_id[0]] == 3 and db["duplicate_of"][by_id[1]] == 3
    assert db["duplicate_of"][by_id[2]] == 2  # same bucket before, another net after
    assert db["topology_relaxed"][by_id[3]] == db["topology_relaxed"][by_id[0]] != "k2"
    assert db["unique"].tolist() == [True, False, False, True]
    assert db["class"].tolist() == ["new", "duplicate", "duplicate", "new"]  # no known phases given
    assert db["class_reason"][by_id[1]] == "same structure as id 3 after relaxation"
    assert db["in_training"].tolist() == [True, False, False, False]
    assert db["training_match"][by_id[3]] == "ref:a"
    assert db["low_energy"].tolist() == [True, False, False, False]  # e_rel 1.0 <= 1.25 < 1.2


def _graphite_abc():
    """Rhombohedral (ABC) graphite: layers, and no known phase of this stacking."""
    from ase import Atoms
    from ase.geometry import cellpar_to_cell

    frac = [[0, 0, 0], [1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 1 / 3], [2 / 3, 1 / 3, 1 / 3],
            [2 / 3, 1 / 3, 2 / 3], [0, 0, 2 / 3]]
    return Atoms("C6", scaled_positions=frac, cell=cellpar_to_cell([2.46, 2.46, 10.05, 90, 90, 120]),
                 pbc=True)


@pytest.fixture(scope="module")
def relaxed_graphite():
    """AB graphite relaxed with the shipped carbon model (what a campaign re-finds)."""
    from hpcxtal.relax.engine import RelaxParams, relax
    from hpcxtal.relax.models import load_model
    from hpcxtal.relax.reference import graphite

    (result,) = relax([graphite()], load_model("mace"), RelaxParams(fmax_eV_per_A=0.02))
    assert result.status == "converged"
    return result.atoms


def test_every_class_from_hand_built_relaxed_structures(sacada, cache, relaxed_graphite):
    from ase import Atoms

    from hpcxtal.campaign import TopologyConfig
    from hpcxtal.screen.known import known_phases
    from hpcxtal.topology.annotate import SignatureParams

    table, _ = sacada
    a = table.structures.atoms(int(np.argsort(table.structures.natoms)[0]))
    simple_cubic = Atoms("C", cell=np.eye(3) * 1.6, pbc=True)  # 3-D, CN 6
    empty = Atoms(pbc=True)
    images = [relaxed_graphite, _graphite_abc(), simple_cubic, a, a.copy(), empty, empty]
    status = ["converged"] * 5 + ["failed", "not_converged"]
    reasons = [""] * 5 + ["energy is not finite", ""]
    rows = _structure_table(images, ["x"] * 7, [0.0, 0.01, 0.5, 0.2, 0.3, np.nan, np.nan],
                            status, reasons)
    topo = TopologyConfig()
    params = SignatureParams(cutoffs=topo.cutoffs(), depth=topo.depth, max_ring=topo.max_ring)
    known = known_phases(params, workers=1)
    db, _ = build_database([(rows, None)], MergeConfig(training=None), params=params, known=known)
    by_id = {int(i): k for k, i in enumerate(db["id"])}
    got = {i: (db["class"][by_id[i]], db["known_phase"][by_id[i]]) for i in range(7)}
    sacada_name = got[3][1]
    assert got == {0: ("known", "graphite (AB)"), 1: ("low_dimensional", ""),
                   2: ("motif_lost", ""), 3: ("known", sacada_name), 4: ("duplicate", sacada_name),
                   5: ("failed", ""), 6: ("failed", "")}
    assert sacada_name.startswith("sacada:")
    assert db["dimension_relaxed"][by_id[0]] == db["dimension_relaxed"][by_id[1]] == 2
    assert db["class_reason"][by_id[1]] == ("2-periodic net, the net of graphite (AB) in another "
                                            "stacking or geometry")
    assert "CN [6]" in db["class_reason"][by_id[2]] and not db["motif_kept"][by_id[2]]
    assert db["class_reason"][by_id[5]] == "relaxation failed: energy is not finite"
    assert db["duplicate_of"][by_id[4]] == 3
    # the headline counts only 3-D nets that keep the motif: the SACADA net, not graphite
    assert db["unique"].tolist() == [db["id"][k] == 3 for k in range(7)]
    # without known phases, the SACADA net is new
    db, _ = build_database([(rows, None)], MergeConfig(training=None), params=params)
    assert db["class"][by_id_of(db, 3)] == "new" and db["class"][by_id_of(db, 0)] == "low_dimensional"
    # a 3-D net that keeps its motif is also compared with phases of other keys (same
    # primitive atom count): a bond crossing the cutoff cannot hide a known phase
    from pymatgen.io.ase import AseAtomsAdaptor

    elsewhere = {"another-key": [("phase filed elsewhere", AseAtomsAdaptor.get_structure(a))]}
    db, _ = build_database([(rows, None)], MergeConfig(training=None), params=params,
                           known=elsewhere)
    assert db["class"][by_id_of(db, 3)] == "known"
    assert db["known_phase"][by_id_of(db, 3)] == "phase filed elsewhere"


def test_report_shows_new_structures_with_thumbnails_and_cifs(sacada, relaxed_graphite, tmp_path):
    from hpcxtal.topology.signature import atoms_signature

    table, _ = sacada
    a = table.structures.atoms(int(np.argsort(table.structures.natoms)[0]))
    rows = _structure_table([relaxed_graphite, a, a.copy()], ["x"] * 3, [0.0, 0.2, 0.3])
    known = {atoms_signature(relaxed_graphite).key: []}  # no phase: graphite stays 2-D
    db, quarantine = build_database([(rows, None)], MergeConfig(training=None), known=known)
    write_table(tmp_path / "db.h5", db, kind="database", quarantine=quarantine, n_sampled=3,
                low_energy_window_eV=0.55)
    report = write_report(tmp_path / "db.h5", tmp_path / "r", top=5)
    assert report.accounting.closes and report.metrics["classes"]["new"] == 1
    assert report.metrics["before"]["N_unique"] == 3 and report.metrics["after"]["N_unique"] == 1
    assert report.metrics["N_new"] == 1 and report.metrics["N_low_E"] == 0  # e_rel 1.2
    assert list(report.thumbnails) == [1]
    assert report.thumbnails[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.html.read_text()
    assert "alt='structure 1'" in text and "href='cif/1.cif'" in text
    assert (tmp_path / "r" / "cif" / "1.cif").exists()
    assert text.count("data:image/png;base64,") == 6 + 1


def by_id_of(db, row_id: int) -> int:
    """Index of the row with id ``row_id``."""
    return int(np.flatnonzero(db["id"] == row_id)[0])


def test_db_query_and_export(campaign, tmp_path, capsys):
    import ase.io

    db, _ = read_database(database_output(campaign.root))
    idx = query(db, unique_only=True)
    assert db["unique"][idx].all() and len(idx) == db["unique"].sum()
    assert len(query(db, top=3)) == 3
    emax = float(db["e_rel"][idx[2]])
    assert (db["e_rel"][query(db, max_e_rel=emax)] <= emax).all()
    assert len(query(db, max_e_rel=emax)) >= 3
    natoms = db.structures.natoms
    sel = query(db, min_atoms=7, max_atoms=8)
    assert ((natoms[sel] >= 7) & (natoms[sel] <= 8)).all() and len(sel)
    spg = int(db["spg_relaxed"][idx[0]])
    assert set(db["spg_relaxed"][query(db, spg=spg)]) == {spg}
    assert main(["db", str(campaign.root), "--unique-only", "--top", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(idx) and lines[0].split()[:3] == ["rank", "id", "e_rel"]
    assert main(["db", str(database_output(campaign.root)), "--max-atoms", "6", "-f", "extxyz",
                 "-o", str(tmp_path / "sel.xyz"), "-q"]) == 0
    images = ase.io.read(tmp_path / "sel.xyz", index=":")
    assert len(images) == ((natoms <= 6) & (natoms > 0)).sum() and all(len(x) == 6 for x in images)
    # the science travels with each structure (extxyz info, ASE db key-value pairs)
    row = int(np.flatnonzero(db["id"] == images[0].info["id"])[0])
    info = images[0].info
    assert info["class"] == db["class"][row] and info["known_phase"] == db["known_phase"][row]
    assert info["topology"] == db["topology_relaxed"][row] and info["dimension"] == 3
    assert info["spg_relaxed"] == db["spg_relaxed"][row]
    np.testing.assert_allclose([info["e_rel"], info["energy_per_atom"]],
                               [db["e_rel"][row], db["energy"][row]])
    assert main(["db", str(campaign.root), "--class", "known", "-f", "ase",
                 "-o", str(tmp_path / "sel.db"), "-q"]) == 0
    from ase.db import connect

    kv = [r.key_value_pairs for r in connect(tmp_path / "sel.db").select()]
    assert len(kv) == (db["class"] == "known").sum() and {k["class"] for k in kv} == {"known"}
    assert all(k["known_phase"].startswith("sacada:") and "e_rel" in k for k in kv)
    # export of the whole database: rows without a relaxed structure are left out
    assert main(["export", str(database_output(campaign.root)), "-f", "cif",
                 "-o", str(tmp_path / "cif"), "-q"]) == 0
    assert len(list((tmp_path / "cif").glob("*.cif"))) == (natoms > 0).sum()
    first = int(db["id"][idx[0]])  # symmetrised in the relaxed space group, named by id
    cif = (tmp_path / "cif" / f"{first}.cif").read_text()
    assert f"\ndata_hpcxtal_{first}\n" in cif
    assert re.search(rf"_symmetry_Int_Tables_number\s+{int(db['spg_relaxed'][idx[0]])}\n", cif)
    assert main(["db", str(campaign.pool_path)]) == 2
    assert "not an hpcxtal database" in capsys.readouterr().err


def test_report_renders_pngs(campaign, tmp_path):
    report = write_report(database_output(campaign.root), tmp_path / "r")
    assert set(report.figures) == {"energy_histogram", "energy_volume", "closeness", "rounds",
                                   "space_groups", "sizes"}
    for path in report.figures.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    text = report.html.read_text()
    assert text.count("data:image/png;base64,") == 6 and "accounting closes" in text
    assert report.metrics["N_unique"] == N_ROWS - 1 and report.metrics["N_valid_env"] == N_ROWS
    db, _ = read_database(database_output(campaign.root))
    before, after = report.metrics["before"], report.metrics["after"]
    assert before["N_unique"] == (db["status"] == "converged").sum() >= after["N_unique"]
    assert before["N_valid_env"] == after["N_valid_env"] == N_ROWS
    assert after["N_new"] == 0 and after["N_train"] == N_ROWS - 1
    # every known phase re-found is listed, with every row that matches it
    phases = report.metrics["known_phases"]
    assert sum(p["rows"] for p in phases) == (db["known_phase"] != "").sum() > 0
    assert all(p["phase"] in text for p in phases) and "Known phases re-found" in text
    # the top unique structures are linked to their symmetrised CIFs
    best = int(db["id"][np.flatnonzero(db["unique"])[0]])
    assert f"href='cif/{best}.cif'" in text
    cif = (tmp_path / "r" / "cif" / f"{best}.cif").read_text()
    spg = int(db["spg_relaxed"][np.flatnonzero(db["unique"])[0]])
    assert f"\ndata_hpcxtal_{best}\n" in cif and spg > 1
    assert re.search(rf"_symmetry_Int_Tables_number\s+{spg}\n", cif)
    rounds = report.metrics["per_round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["cumulative"]["N_valid_env"] == N_ROWS
    assert rounds[0]["N_valid_env"] + rounds[1]["N_valid_env"] == N_ROWS


def _chromium(url: str) -> tuple[str, list[str]]:
    """(DOM, console messages) of ``url`` in headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


def test_report_html_opens_in_headless_chromium(campaign, tmp_path):
    if shutil.which("chromium") is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("HPCXTAL_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    broken = tmp_path / "broken.html"  # the check itself must be able to fail
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert _chromium(broken.as_uri())[1]
    report = write_report(database_output(campaign.root), tmp_path / "r")
    dom, console = _chromium(report.html.as_uri())
    assert console == []
    assert "hpcxtal campaign report" in dom and dom.count("<img") == 6
    assert "accounting closes" in dom


def test_merge_is_the_last_stage_and_config_is_validated(tmp_path):
    assert PIPELINE[-1].name == "merge" and not PIPELINE[-1].per_shard
    assert PIPELINE[-1].executor == "cpu"
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmerge:\n  stol: -1\n")
    with pytest.raises(ConfigError, match="stol must be positive"):
        CampaignConfig.from_file(path)
    path.write_text("name: x\nmerge:\n  training: null\n  low_energy_window_eV: 0.3\n")
    assert CampaignConfig.from_file(path).merge == MergeConfig(training=None,
                                                               low_energy_window_eV=0.3)


def test_rows_relaxed_in_two_shards_are_structure_duplicates(campaign, tmp_path):
    """The same structures relaxed in another shard under other ids (what the per-shard
    first de-duplication lets through) become duplicates of the first ids."""
    table, _ = read_table(stage_output("relax", campaign.root, 0))
    other = table.take(np.arange(len(table)))
    other.columns["id"] = table["id"] + 100
    other.columns["duplicate_of"] = table["duplicate_of"] + 100
    write_table(tmp_path / "other.h5", other, kind="relax", **table.attrs)
    merge_files([stage_output("relax", campaign.root, 0), tmp_path / "other.h5"], tmp_path / "db.h5",
                MergeConfig(training=None))
    db, _ = read_database(tmp_path / "db.h5")
    conv = (db["status"] == "converged") & (db["id"] >= 100)
    assert conv.any()
    np.testing.assert_array_equal(db["duplicate_of"][conv], db["id"][conv] - 100)
    assert not db["unique"][conv].any() and not db["in_training"].any()
    # topology duplicates in the copy follow their representative to the original
    assert (db["class"][conv] == "duplicate").all()
    topo = (db["class"] == "duplicate") & (db["status"] == "skipped")
    for i in np.flatnonzero(topo & (db["id"] >= 100)):
        assert db["duplicate_of"][i] < 100
    books = accounting(db, read_database(tmp_path / "db.h5")[1], len(db))
    # one unique row per net: the originals, each a known SACADA net
    assert books.closes and books.counts["known"] == conv.sum() and books.counts["new"] == 0
