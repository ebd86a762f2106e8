"""The rescoring tier: real CHGNet (bundled weights) re-relaxes the screen's rows within
the window plus the margin; both tiers are kept, the database ranks and classes by the
best tier, the report shows both; provenance and staleness of the stage; offline errors.

The screen is hpcxtal's shipped carbon MACE model on the three smallest SACADA rows (6
atoms each); window and margin are chosen from the screen's own energies so that one row
lies beyond the margin, and the merge window from the rows the rescore moved most.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from hpcxtal.campaign import Campaign, CampaignConfig, ImportConfig, RelaxConfig, ShardConfig
from hpcxtal.cli import main
from hpcxtal.layout import database_output, shard_path, stage_output
from hpcxtal.merge.database import MergeConfig, read_database
from hpcxtal.merge.stage import merge_files
from hpcxtal.relax.models import chgnet_weights
from hpcxtal.report import write_report
from hpcxtal.rescore.config import RescoreConfig
from hpcxtal.rescore.stage import rescore_selection
from hpcxtal.stages import PIPELINE, Resources, stage_spec
from hpcxtal.store.hdf5 import file_sha256, file_summary, read_table, write_table
from hpcxtal.store.table import Table, str_array
from hpcxtal.topology.stage import topology_file

from conftest import one_line_error
from test_relax import tiny_mace

SCREEN = RelaxConfig(fmax_eV_per_A=0.15, max_steps=80, steps_per_atom=0)  # the demo's screen


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: CHGNet's small graphs are slowest when threads fight for cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """The three smallest SACADA rows relaxed by the screen (hpcxtal-carbon)."""
    from hpcxtal.data import SACADA_PATH

    table, _ = read_table(SACADA_PATH)
    small = table.take(np.argsort(table.structures.natoms, kind="stable")[:3])
    small.structures = None
    folder = tmp_path_factory.mktemp("rescore")
    write_table(folder / "pool.h5", small, kind="pool")
    stage_spec("relax").run_file(folder / "pool.h5", folder / "relax.h5", SCREEN,
                                 Resources(workers=1))
    return folder / "relax.h5"


@pytest.fixture(scope="module")
def rescored(screened):
    """The screen's output rescored by CHGNet: the highest row beyond window + margin."""
    relax, _ = read_table(screened)
    assert (relax["status"] == "converged").all()
    e = np.sort(relax["e_rel"])
    window = float(e[0] + 0.01)
    cfg = RescoreConfig(window_eV=window, margin_eV=float((e[1] + e[2]) / 2 - window),
                        fmax_eV_per_A=0.1)
    dest = screened.parent / "rescore.h5"
    counts = stage_spec("rescore").run_file(screened, dest, cfg, Resources(workers=1))
    return dest, cfg, counts


def test_rescore_keeps_both_tiers_and_rescores_only_within_the_margin(screened, rescored):
    dest, cfg, counts = rescored
    relax, _ = read_table(screened)
    out, _ = read_table(dest)
    np.testing.assert_array_equal(out["id"], relax["id"])
    top = int(np.argmax(relax["e_rel"]))
    chosen = np.flatnonzero(np.arange(3) != top)
    # the screen's numbers, unchanged, on every row
    np.testing.assert_array_equal(out["e_rel_screen"], relax["e_rel"])
    np.testing.assert_array_equal(out["energy_screen"], relax["energy"])
    # beyond window + margin: not rescored, the screen is its best tier
    assert out["status_rescore"][top] == "skipped" and "above the rescore limit" in \
        out["status_reason_rescore"][top]
    assert out["tier"][top] == "screen" and out["e_rel"][top] == relax["e_rel"][top]
    assert np.isnan(out["e_rel_rescore"][top])
    np.testing.assert_array_equal(out.structures.atoms(top).positions,
                                  relax.structures.atoms(top).positions)
    # within it: re-relaxed by CHGNet, which gives the row's energy, e_rel and structure
    assert (out["status_rescore"][chosen] == "converged").all()
    assert (out["tier"][chosen] == "rescore").all()
    np.testing.assert_array_equal(out["e_rel"][chosen], out["e_rel_rescore"][chosen])
    e_ref = out.attrs["rescore_e_graphite_eV_per_atom"]
    np.testing.assert_allclose(out["e_rel_rescore"][chosen], out["energy_rescore"][chosen] - e_ref)
    assert abs(e_ref - out.attrs["e_graphite_eV_per_atom"]) > 1e-3  # each model's own graphite
    assert not np.allclose(out["e_rel_rescore"][chosen], out["e_rel_screen"][chosen], atol=1e-3)
    assert (out["relax_steps_rescore"][chosen] > 0).all()
    # which model produced each number: name and the weights file's SHA-256
    assert out.attrs["rescore_model_backend"] == "chgnet"
    assert out.attrs["rescore_model_sha256"] == file_sha256(chgnet_weights("0.3.0"))
    assert out.attrs["model_backend"] == "mace"
    assert out.attrs["model_sha256"] == file_sha256(out.attrs["model_file"])
    assert out.attrs["rescore_window_eV"] == cfg.window_eV
    assert counts["rescored"] == 2 and counts["converged"] == 2


def test_database_ranks_and_classes_by_the_best_tier(screened, rescored, tmp_path):
    dest, cfg, _ = rescored
    out, _ = read_table(dest)
    both = out["status_rescore"] == "converged"
    # a merge window between the two tiers' energies of the row the rescore moved most
    k = np.flatnonzero(both)[np.argmax(np.abs(out["e_rel_rescore"] - out["e_rel_screen"])[both])]
    window = float((out["e_rel_screen"][k] + out["e_rel_rescore"][k]) / 2)
    db_path = tmp_path / "db.h5"
    merge_files([dest], db_path, MergeConfig(training=None, low_energy_window_eV=window),
                workers=1)
    db, _ = read_database(db_path)
    row = int(np.flatnonzero(db["id"] == out["id"][k])[0])
    assert db["unique"][row] and db["tier"][row] == "rescore"
    inside_screen = db["e_rel_screen"][row] <= window
    assert bool(db["low_energy"][row]) == (not inside_screen)  # moved across by the rescore
    assert bool(db["low_energy"][row]) == bool(db["e_rel_rescore"][row] <= window)
    # exports say which tier a structure's energy comes from
    from hpcxtal.store.formats import table_images

    info = table_images(db.take(np.array([row])))[0].info
    assert info["tier"] == "rescore" and info["e_rel_screen"] == db["e_rel_screen"][row]
    # ranked by the best tier's e_rel
    assert (np.diff(db["e_rel"]) >= 0).all()
    for name in ("tier", "energy_screen", "e_rel_screen", "energy_rescore", "e_rel_rescore",
                 "status_rescore", "status_reason_rescore"):
        assert name in db, name
    attrs = file_summary(db_path)["attrs"]
    assert attrs["rescore_model_sha256"] == out.attrs["rescore_model_sha256"]
    assert attrs["model_sha256"] == out.attrs["model_sha256"]
    # the report shows both tiers
    report = write_report(db_path, tmp_path / "report")
    tiers = report.metrics["tiers"]
    assert tiers["rescored"] == 2 and tiers["moved_in"] + tiers["moved_out"] == 1
    assert tiers["N_low_E_best"] == int(db["low_energy"].sum())
    assert "tiers" in report.figures
    page = report.html.read_text()
    assert "Energy tiers" in page and out.attrs["rescore_model_sha256"] in page
    # without a rescore the database says so: one tier, the screen's
    merge_files([screened], tmp_path / "screen.h5", MergeConfig(training=None), workers=1)
    plain, _ = read_database(tmp_path / "screen.h5")
    assert set(plain["tier"]) == {"screen"} and set(plain["status_rescore"]) == {"skipped"}
    np.testing.assert_array_equal(plain["e_rel_screen"], plain["e_rel"])


def test_rescore_selection():
    table = Table({"status": str_array(["converged", "converged", "not_converged", "converged"]),
                   "e_rel": np.array([0.1, 0.69, 0.2, 0.71])})
    np.testing.assert_array_equal(rescore_selection(table, 0.55, 0.15), [0, 1])
    np.testing.assert_array_equal(rescore_selection(table, 0.55, 0.0), [0])


def test_missing_model_file_is_one_line_error(screened, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mace-mp.model"
    assert main(["rescore", str(screened), "-o", str(tmp_path / "r.h5"), "--model",
                 str(missing)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(missing) in line and "not found" in line
    assert not (tmp_path / "r.h5").exists()
    with pytest.raises(ValueError, match="margin_eV"):
        RescoreConfig(margin_eV=-0.1)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A 2-shard campaign of six small SACADA rows through merge, screened and rescored by
    tiny random MACE models (the rescore through a mace-torch file; fast)."""
    from hpcxtal.data import SACADA_PATH

    folder = tmp_path_factory.mktemp("camp")
    table, _ = read_table(SACADA_PATH)
    small = table.take(np.argsort(table.structures.natoms, kind="stable")[:6])
    small.structures = None
    write_table(folder / "pool.h5", small, kind="pool")
    screen = tiny_mace(folder / "screen.model", seed=0)
    second = tiny_mace(folder / "second.model", seed=1)
    relax = RelaxConfig(model=str(screen), max_steps=3, steps_per_atom=0, fmax_eV_per_A=1e3)
    cfg = CampaignConfig(name="r", import_=ImportConfig(inputs=[str(folder / "pool.h5")]),
                         shard=ShardConfig(n_shards=2), relax=relax,
                         rescore=RescoreConfig(model=str(second), margin_eV=100.0, max_steps=3,
                                               steps_per_atom=0, fmax_eV_per_A=1e3),
                         merge=MergeConfig(training=None))
    camp = Campaign.create(folder / "c", cfg)
    assert Campaign(camp.root).config.rescore == cfg.rescore  # YAML round trip
    stage_spec("import").run(camp)
    stage_spec("shard").run(camp)
    for i in range(2):
        topology_file(shard_path(camp.shard_dir, i), stage_output("topology", camp.root, i),
                      cfg.topology, workers=1)
    for name in ("dedup", "relax", "rescore", "merge"):
        stage_spec(name).run(camp, resources=Resources(workers=1))
    return camp


def _edit(camp, **sections) -> Campaign:
    path = camp.root / "campaign.yaml"
    data = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        data[name] = None if values is None else {**(data.get(name) or {}), **values}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Campaign(camp.root)


def test_campaign_rescore_stage_provenance_and_staleness(campaign, capsys):
    names = [s.name for s in PIPELINE]
    assert names.index("relax") + 1 == names.index("rescore") == names.index("merge") - 1
    rescore, merge = stage_spec("rescore"), stage_spec("merge")
    assert rescore.outputs(campaign, 1) == [campaign.root / "rescore" / "rescore-0001.h5"]
    assert rescore.done(campaign) and merge.done(campaign)
    db, _ = read_database(database_output(campaign.root))
    assert (db["tier"][db["status"] == "converged"] == "rescore").all()
    original = (campaign.root / "campaign.yaml").read_text()
    try:
        # resources never make it stale
        edited = _edit(campaign, rescore={"device": "cuda:1", "workers": 2,
                                          "batch_atom_budget": 50, "chunk_rows": 1})
        assert rescore.done(edited) and merge.done(edited)
        # a science setting of its own does, and not the relax before it
        edited = _edit(campaign, rescore={"margin_eV": 0.5})
        assert not rescore.done(edited) and stage_spec("relax").done(edited)
        assert all("made with another stage config" in why
                   for _, why in rescore.stale(edited, None))
        # so does the campaign's low-energy window (it picks the rows)
        (campaign.root / "campaign.yaml").write_text(original)
        edited = _edit(campaign, merge={"low_energy_window_eV": 0.3})
        assert not rescore.done(edited)
        # redone the same, the merge stays current; with another model, the merge (whose
        # inputs are the rescore outputs) is stale
        (campaign.root / "campaign.yaml").write_text(original)
        rescore.run(Campaign(campaign.root), shard=0, force=True)
        assert rescore.done(Campaign(campaign.root)) and merge.done(Campaign(campaign.root))
        other = tiny_mace(campaign.root.parent / "third.model", seed=2)
        edited = _edit(campaign, rescore={"model": str(other)})
        assert not rescore.done(edited, 0) and merge.done(edited)
        rescore.run(edited, shard=0, resources=Resources(workers=1))
        assert rescore.done(edited, 0) and not merge.done(edited)
        (campaign.root / "campaign.yaml").write_text(original)
        rescore.run(Campaign(campaign.root), shard=0, resources=Resources(workers=1))
        # job arrays come from the registry: a stale rescore shard is one array task
        from hpcxtal.hpc.site import load_site
        from hpcxtal.hpc.submit import submit_campaign

        edited = _edit(campaign, rescore={"margin_eV": 0.5})
        (sub,) = submit_campaign(edited, load_site("slurm_generic"), ["rescore"], dry_run=True)
        assert sub.stage == "rescore" and sub.shards == [0, 1]
        assert f" rescore {campaign.root.resolve()}" in open(sub.script).read()
        (campaign.root / "campaign.yaml").write_text(original)
        # status lists the stage; with the section removed it is off
        assert main(["status", str(campaign.root)]) == 0
        assert "rescore   " in capsys.readouterr().out
        edited = _edit(campaign, rescore=None)
        assert rescore.done(edited) and not merge.done(edited)  # merge now reads relax outputs
        assert main(["status", str(campaign.root)]) == 0
        assert "rescore    off" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exit_:
            main(["rescore", str(campaign.root)])
        assert exit_.value.code == 2
        assert "rescore is off" in one_line_error(capsys.readouterr().err)
    finally:
        (campaign.root / "campaign.yaml").write_text(original)


def test_rescore_section_is_off_unless_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CampaignConfig(name="x").to_yaml())  # writes 'rescore: null'
    assert CampaignConfig.from_file(path).rescore is None
    path.write_text("name: x\nrescore: {}\n")
    assert CampaignConfig.from_file(path).rescore == RescoreConfig()
    path.write_text("name: x\nrescore:\n  model: /some/mace.model\n  margin_eV: 0.2\n")
    cfg = CampaignConfig.from_file(path).rescore
    assert cfg.backend == "mace" and cfg.relax_config().model == "/some/mace.model"
    assert RescoreConfig().relax_config().backend == "chgnet"
