"""The discrete (binned) representation of the GAN and the (C)VAE (LEGO-xtal's "-Dis"
models): binning, training, one model file that records it, sampling on the grid,
determinism, and files that do not fit."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hpcxtal.generate.cvae import ModelConfig
from hpcxtal.generate.gan import GANConfig
from hpcxtal.generate.gmm import ColumnGMM, free_mask, row_values
from hpcxtal.generate.plugin import load_generator, read_model_file
from hpcxtal.generate.sample import sample_pool
from hpcxtal.generate.train import TrainConfig, train
from hpcxtal.store.hdf5 import read_table

BINS = 20
TINY = {"vae": ModelConfig(conditional=False, hidden=32, latent_dim=8, n_components=4,
                           condition_embedding=16, n_bins=BINS),
        "cvae": ModelConfig(hidden=32, latent_dim=8, n_components=4, condition_embedding=16,
                            n_bins=BINS),
        "gan": GANConfig(latent_dim=8, hidden=32, condition_embedding=16, n_critic=2, n_bins=BINS)}


def schedule(kind: str) -> TrainConfig:
    """A few seconds of training; the unconditional vae needs more to learn conditions
    that exist at all."""
    if kind == "vae":
        return TrainConfig(model=TINY[kind], epochs=30, batch_size=16, learning_rate=3e-3)
    return TrainConfig(model=TINY[kind], epochs=4, batch_size=16)


@pytest.fixture(scope="module")
def binned_files(small_training_file):
    """kind -> a binned model trained on the small table (a few seconds each)."""
    out = {}
    for kind in TINY:
        dest = small_training_file.parent / f"binned-{kind}.pt"
        train(small_training_file, dest, schedule(kind))
        out[kind] = dest
    return out


def test_binned_columns_are_bins_and_the_cell_stays_a_mixture(sacada):
    table, _ = sacada
    values = row_values(table["cell"], table["xyz"])
    mask = free_mask(table["spg"], table["wps"])
    gmm = ColumnGMM.fit(values, mask, k=4, seed=0, n_bins=BINS)
    assert gmm.n_components == BINS
    assert not gmm.binned[:6].any() and gmm.binned[6:].all()
    assert (gmm.active[:6].sum(1) <= 4).all() and (gmm.active[6:].sum(1) == BINS).all()
    comp, resid = gmm.encode(values)
    back = gmm.inverse_numpy(comp, resid)
    coords = mask[:, 6:]
    # a coordinate comes back as its bin's lower edge: at most one bin below, modulo 1
    gap = (values[:, 6:] % 1.0 - back[:, 6:])[coords]
    assert (gap >= -1e-9).all() and (gap < 1.0 / BINS).all()
    assert (resid[:, 6:] == 0).all()
    np.testing.assert_allclose(gmm.encode(np.array([[0.0] * 6 + [0.25, 0.5, 0.999] + [0.0] * 21]))[0][0, 6:9],
                               [BINS // 4, BINS // 2, BINS - 1])
    # the continuous model has no binned column (the shipped model's file loads unchanged)
    assert not ColumnGMM.fit(values, mask, k=4, seed=0).binned.any()


@pytest.mark.parametrize("kind", list(TINY))
def test_binned_models_record_the_binning_and_sample_on_the_grid(kind, binned_files):
    path = binned_files[kind]
    _, blob = read_model_file(path)
    assert blob["kind"] == kind and json.loads(blob["config"])["model"]["n_bins"] == BINS
    gen = load_generator(path, dtype=torch.float64)
    spg, wps, values, _ = gen.sample_raw(40, np.random.default_rng(1))
    free = free_mask(spg, wps)[:, 6:]
    on_grid = values[:, 6:][free] * BINS
    np.testing.assert_allclose(on_grid, np.round(on_grid), atol=1e-9)
    pool, quarantine = sample_pool(path, 40, seed=3)
    assert len(pool) > 0 and len(pool) + len(quarantine) == 40
    again, _ = sample_pool(path, 40, seed=3)
    np.testing.assert_array_equal(pool["xyz"], again["xyz"])
    np.testing.assert_array_equal(pool["cell"], again["cell"])


def test_binned_training_is_deterministic(small_training_file, binned_files, tmp_path):
    for kind in ("vae", "gan"):
        dest = tmp_path / f"{kind}.pt"
        train(small_training_file, dest, schedule(kind))
        assert read_model_file(dest)[1]["model_id"] == read_model_file(binned_files[kind])[1]["model_id"]


@pytest.mark.parametrize("kind", ["cvae", "gan"])
def test_binned_decode_is_differentiable(kind, binned_files):
    gen = load_generator(binned_files[kind], dtype=torch.float64)
    cond = torch.as_tensor(gen.conditions.conditions[:5])
    z = torch.randn(5, gen.latent_dim, dtype=torch.float64, requires_grad=True)
    out = gen.decode(z, cond[:, 0], cond[:, 1:])
    free = torch.as_tensor(free_mask(cond[:, 0].numpy(), cond[:, 1:].numpy()))
    (out * free).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_a_file_whose_weights_do_not_fit_its_binning_is_refused(binned_files, tmp_path):
    for kind in ("vae", "gan"):
        _, blob = read_model_file(binned_files[kind])
        config = json.loads(blob["config"])
        config["model"]["n_bins"] = 50
        torch.save(dict(blob, config=json.dumps(config)), tmp_path / f"{kind}.pt")
        with pytest.raises(ValueError, match="weights do not fit the model config"):
            load_generator(tmp_path / f"{kind}.pt")
    for bad in (1, -3):
        with pytest.raises(ValueError, match="n_bins"):
            GANConfig(n_bins=bad)
        with pytest.raises(ValueError, match="n_bins"):
            ModelConfig(n_bins=bad)


def test_cli_trains_discrete_models_and_a_campaign_samples_one(small_training_file, tmp_path, cli):
    from hpcxtal.campaign import Campaign, CampaignConfig, SampleConfig
    from hpcxtal.stages import stage_spec

    model = tmp_path / "gan-dis.pt"
    rc, _, _ = cli("train", small_training_file, "-o", model, "--model", "gan", "--discrete",
                   "--epochs", "2", "--hidden", "32", "--batch-size", "16", "-q")
    assert rc == 0 and load_generator(model).config["model"]["n_bins"] == 100
    rc, _, _ = cli("train", small_training_file, "-o", tmp_path / "v.pt", "--model", "vae",
                   "--discrete", "12", "--epochs", "1", "--hidden", "32", "-q")
    assert rc == 0 and load_generator(tmp_path / "v.pt").config["model"]["n_bins"] == 12
    rc, _, err = cli("train", small_training_file, "-o", tmp_path / "d.pt", "--model", "diffusion",
                     "--discrete", "-q")
    assert rc != 0 and "no binned representation" in err
    cfg = CampaignConfig(name="d", sample=SampleConfig(n=20, model=str(model)))
    camp = Campaign.create(tmp_path / "c", cfg)
    report = stage_spec("sample").run(camp, None, False)
    assert report.counts["rows"] + report.counts["quarantined"] == 20
    pool, _ = read_table(camp.pool_path)
    assert all(o.startswith("gan:") for o in pool["origin"])
