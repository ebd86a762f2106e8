"""The relax stage on files and on a campaign (shards, no-op rerun), and its CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hpcxtal.campaign import Campaign, CampaignConfig, ImportConfig, RelaxConfig, ShardConfig
from hpcxtal.cli import main
from hpcxtal.config import ConfigError
from hpcxtal.layout import shard_path, stage_output
from hpcxtal.relax.stage import RelaxRunner
from hpcxtal.relax.table import relax_selection
from hpcxtal.stages import PIPELINE, stage_spec
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table
from hpcxtal.topology.stage import topology_file

from test_relax import tiny_mace


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    """Six of the smallest SACADA structures, as rows (no stored structures)."""
    from hpcxtal.data import SACADA_PATH

    table, _ = read_table(SACADA_PATH)
    idx = np.argsort(table.structures.natoms, kind="stable")[:6]
    small = table.take(idx)
    small.structures = None
    path = tmp_path_factory.mktemp("pool") / "small.h5"
    write_table(path, small, kind="pool")
    return path


@pytest.fixture(scope="module")
def relax_cfg(tmp_path_factory):
    model = tiny_mace(tmp_path_factory.mktemp("model") / "tiny.model")
    return RelaxConfig(backend="mace", model=str(model), max_steps=3, steps_per_atom=0)


def test_relax_file_adds_energy_columns_and_model_attributes(small_pool, relax_cfg, tmp_path):
    dest = tmp_path / "relaxed.h5"
    report = stage_spec("relax").run_file(small_pool, dest, relax_cfg)
    table, _ = read_table(dest)
    source, _ = read_table(small_pool)
    np.testing.assert_array_equal(table["id"], source["id"])
    assert set(source.columns) < set(table.columns)
    assert {"energy", "e_rel", "status", "status_reason", "relax_steps", "energy_initial",
            "rms_displacement_A", "volume_change"} <= set(table.columns)
    assert table.structures is not None and len(table.structures) == len(table)
    e_graphite = table.attrs["e_graphite_eV_per_atom"]
    np.testing.assert_allclose(table["e_rel"], table["energy"] - e_graphite)
    assert set(table["status"]) <= {"converged", "not_converged"} and (table["relax_steps"] <= 3).all()
    assert set(table["status_reason"]) == {""}
    # how far each structure moved: finite, and no move at all means zero
    assert np.isfinite(table["energy_initial"]).all() and (table["rms_displacement_A"] >= 0).all()
    assert np.isfinite(table["volume_change"]).all()
    from hpcxtal.relax.models import load_model
    from hpcxtal.store.formats import table_images

    images = table_images(source)[:2]
    start = load_model("mace", relax_cfg.model).evaluate(images).energy.detach().numpy()
    np.testing.assert_allclose(table["energy_initial"][:2], start / [len(a) for a in images],
                               rtol=1e-9)
    assert table.attrs["model_backend"] == "mace"
    assert table.attrs["model_file"].endswith("tiny.model")
    assert table.attrs["model_dtype"] == "float64"
    assert json.loads(table.attrs["stage_config"])["max_steps"] == 3
    assert report["rows"] == 6 and report["relaxed"] == 6


def test_campaign_relax_by_shard_and_noop_rerun(small_pool, relax_cfg, tmp_path):
    names = [s.name for s in PIPELINE]
    assert names.index("relax") == names.index("dedup") + 1 == names.index("topology") + 2
    cfg = CampaignConfig(name="t", import_=ImportConfig(inputs=[str(small_pool)]),
                         shard=ShardConfig(n_shards=2), relax=relax_cfg)
    campaign = Campaign.create(tmp_path / "camp", cfg)
    assert Campaign(campaign.root).config.relax == relax_cfg  # YAML round trip
    stage_spec("import").run(campaign)
    stage_spec("shard").run(campaign)
    for i in range(2):  # topology straight on the shards (every row signed)
        topology_file(shard_path(campaign.shard_dir, i), stage_output("topology", campaign.root, i),
                      cfg.topology, workers=1)
    stage_spec("dedup").run(campaign)
    relax = stage_spec("relax")

    report = stage_spec("relax").run(campaign, shard=1)  # one array task
    assert report.outputs == [stage_output("relax", campaign.root, 1)]
    assert not stage_output("relax", campaign.root, 0).exists()
    assert relax.done(campaign, 1) and not relax.done(campaign, None)
    first = stage_output("relax", campaign.root, 1).stat().st_mtime_ns

    stage_spec("relax").run(campaign, None)  # the rest: shard 1 is complete and left alone
    assert stage_output("relax", campaign.root, 1).stat().st_mtime_ns == first
    assert relax.done(campaign, None)
    assert stage_spec("relax").run(campaign, shard=0).skipped
    assert main(["relax", str(campaign.root), "-q"]) == 0
    assert stage_output("relax", campaign.root, 1).stat().st_mtime_ns == first
    tables = [read_table(stage_output("relax", campaign.root, i))[0] for i in range(2)]
    ids = np.concatenate([t["id"] for t in tables])
    assert sorted(ids) == sorted(read_table(campaign.pool_path)[0]["id"])
    status = np.concatenate([t["status"] for t in tables])
    duplicates = np.concatenate([t["duplicate_of"] != t["id"] for t in tables])
    reason = np.concatenate([t["status_reason"] for t in tables])
    assert set(status[duplicates]) <= {"skipped"}
    assert all(r.startswith("topology duplicate of id") for r in reason[duplicates])
    assert "skipped" not in set(status[~duplicates])


def test_relax_selection_skips_invalid_and_duplicate_rows():
    table = Table({"id": np.arange(4, dtype=np.uint64), "valid": np.array([1, 1, 0, 1], bool),
                   "dimension": np.array([3, 3, -1, -1], np.int8),
                   "duplicate_of": np.array([0, 0, 2, 3], np.uint64)})
    chosen, skipped = relax_selection(table)
    assert list(chosen) == [0]
    assert skipped == {1: "topology duplicate of id 0",
                       2: "not CN-valid after refinement",
                       3: "no topology signature"}


def test_relax_config_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nrelax:\n  backend: nequip\n")
    with pytest.raises(ConfigError, match="backend 'nequip'"):
        CampaignConfig.from_file(path)
    path.write_text("name: x\nrelax:\n  dtype: float32\n")
    relax_cfg = CampaignConfig.from_file(path).relax
    assert (relax_cfg.backend, relax_cfg.model) == ("mace", None)  # the shipped carbon model
    path.write_text("name: x\nrelax:\n  fmax: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'fmax'"):
        CampaignConfig.from_file(path)
    path.write_text("name: x\nrelax:\n  optimizer: bfgs\n")
    with pytest.raises(ConfigError, match="optimizer 'bfgs': use one of .*lbfgs.*fire"):
        CampaignConfig.from_file(path)
    assert CampaignConfig(name="x").relax.optimizer == "lbfgs"


def test_cli_relax_defaults_to_the_shipped_mace_model(small_pool, tmp_path):
    from hpcxtal.relax.models import BUILTIN_MACE_MODELS

    dest = tmp_path / "out.h5"
    assert main(["relax", str(small_pool), "-o", str(dest), "--max-steps", "2"]) == 0
    table, _ = read_table(dest)
    assert table.attrs["model_backend"] == "mace"
    assert table.attrs["model_file"] == str(BUILTIN_MACE_MODELS["hpcxtal-carbon"].resolve())
    assert np.isfinite(table["e_rel"]).all()


def test_cli_relax_optimizer_option_reaches_the_output(small_pool, tmp_path):
    import json

    dest = tmp_path / "out.h5"
    assert main(["relax", str(small_pool), "-o", str(dest), "--max-steps", "2",
                 "--optimizer", "fire"]) == 0
    table, _ = read_table(dest)
    assert json.loads(table.attrs["stage_config"])["optimizer"] == "fire"


def test_cli_missing_model_is_one_line_error(small_pool, tmp_path, capsys):
    code = main(["relax", str(small_pool), "-o", str(tmp_path / "out.h5"), "--backend", "mace",
                 "--model", str(tmp_path / "absent.model")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "absent.model not found" in err
    assert not (tmp_path / "out.h5").exists()


def test_cli_relax_shard_out_of_range(small_pool, relax_cfg, tmp_path, capsys):
    cfg = CampaignConfig(name="t", import_=ImportConfig(inputs=[str(small_pool)]),
                         shard=ShardConfig(n_shards=1), relax=relax_cfg)
    campaign = Campaign.create(tmp_path / "camp", cfg)
    assert main(["relax", str(campaign.root), "--shard", "3"]) == 2
    assert "the campaign has shards 0-0" in capsys.readouterr().err


def test_relax_config_reaches_the_optimizer(relax_cfg):
    from dataclasses import replace


    cfg = replace(relax_cfg, symmetrize=True, symprec_A=1e-4, batch_edge_budget=5000,
                  optimizer="fire")
    _, params, _ = RelaxRunner(cfg).setup()
    assert params.optimizer == "fire"
    assert (params.symmetrize, params.symprec_A, params.batch_edge_budget) == (True, 1e-4, 5000)
    assert params.batch_atom_budget == cfg.batch_atom_budget and params.max_steps == 3
