"""The relax stage on files and on a campaign (shards, no-op rerun), and its CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hpcxtal.campaign import (Campaign, CampaignConfig, ImportConfig, RelaxConfig, ShardConfig,
                              STAGES)
from hpcxtal.cli import main
from hpcxtal.config import ConfigError
from hpcxtal.stages import import_campaign, relax_campaign, relax_file, shard_campaign
from hpcxtal.store.hdf5 import read_table, write_table

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
    report = relax_file(small_pool, dest, relax_cfg)
    table, _ = read_table(dest)
    source, _ = read_table(small_pool)
    np.testing.assert_array_equal(table["id"], source["id"])
    assert set(source.columns) < set(table.columns)
    assert {"energy", "e_rel", "status", "steps"} <= set(table.columns)
    assert table.structures is not None and len(table.structures) == len(table)
    e_graphite = table.attrs["e_graphite_eV_per_atom"]
    np.testing.assert_allclose(table["e_rel"], table["energy"] - e_graphite)
    assert set(table["status"]) <= {"converged", "not_converged"} and (table["steps"] <= 3).all()
    assert table.attrs["model_backend"] == "mace"
    assert table.attrs["model_file"].endswith("tiny.model")
    assert table.attrs["model_dtype"] == "float64"
    assert json.loads(table.attrs["relax_parameters"])["max_steps"] == 3
    assert report.counts["rows"] == 6


def test_campaign_relax_by_shard_and_noop_rerun(small_pool, relax_cfg, tmp_path):
    assert STAGES.index("relax") == STAGES.index("shard") + 1
    cfg = CampaignConfig(name="t", import_=ImportConfig(inputs=[str(small_pool)]),
                         shard=ShardConfig(n_shards=2), relax=relax_cfg)
    campaign = Campaign.create(tmp_path / "camp", cfg)
    assert Campaign(campaign.root).config.relax == relax_cfg  # YAML round trip
    import_campaign(campaign)
    shard_campaign(campaign)

    report = relax_campaign(campaign, shard=1)  # one array task
    assert report.outputs == [campaign.relax_path(1)] and not campaign.relax_path(0).exists()
    assert campaign.manifest()["stages"]["relax"]["status"] == "partial"
    first = campaign.relax_path(1).stat().st_mtime_ns

    report = relax_campaign(campaign)  # the rest: shard 1 is complete and left alone
    assert campaign.relax_path(1).stat().st_mtime_ns == first
    assert campaign.manifest()["stages"]["relax"]["status"] == "done"
    assert campaign.manifest()["stages"]["relax"]["counts"]["rows"] == 6
    again = relax_campaign(campaign, shard=0)
    assert again.skipped
    assert main(["relax", str(campaign.root), "-q"]) == 0
    assert campaign.relax_path(1).stat().st_mtime_ns == first
    ids = np.concatenate([read_table(campaign.relax_path(i))[0]["id"] for i in range(2)])
    assert sorted(ids) == sorted(read_table(campaign.pool_path)[0]["id"])


def test_relax_config_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nrelax:\n  backend: nequip\n")
    with pytest.raises(ConfigError, match="backend 'nequip'"):
        CampaignConfig.from_file(path)
    path.write_text("name: x\nrelax:\n  backend: mace\n")
    with pytest.raises(ConfigError, match="needs model"):
        CampaignConfig.from_file(path)
    path.write_text("name: x\nrelax:\n  fmax: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'fmax'"):
        CampaignConfig.from_file(path)


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
    assert "shards 0..0" in capsys.readouterr().err
