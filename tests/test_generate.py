"""Generator: augmentation, GMM transform, condition sampler, training, sampling, stage, CLI."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hpcxtal.crystal.row import decode, to_structure
from hpcxtal.generate.augment import AugmentConfig, augment_table, fingerprint, generator_choices
from hpcxtal.generate.conditions import ConditionSampler, check_condition
from hpcxtal.generate.cvae import ModelConfig
from hpcxtal.generate.gmm import ColumnGMM, fit_gmm_1d, free_mask
from hpcxtal.generate.train import TrainConfig, train
from hpcxtal.store.hdf5 import read_table, write_table

TINY_AUG = AugmentConfig(max_reps=3, max_depth=1, n_choices=3, seed=7)
TINY_MODEL = ModelConfig(hidden=64, latent_dim=8, n_components=4, condition_embedding=16)


def _small_sources(sacada, n=2):
    table, _ = sacada
    atoms = np.array([table.row(i).n_atoms() for i in range(len(table))])
    # two small crystals of different space groups
    order = [i for i in np.argsort(atoms, kind="stable") if atoms[i] <= 16]
    picked, groups = [], set()
    for i in order:
        if int(table["spg"][i]) not in groups:
            picked.append(i)
            groups.add(int(table["spg"][i]))
        if len(picked) == n:
            break
    return table.take(np.array(picked))


@pytest.fixture(scope="module")
def augmented(sacada):
    src = _small_sources(sacada)
    out, stats = augment_table(src, TINY_AUG, workers=2)
    return src, out, stats


@pytest.fixture(scope="module")
def training_file(augmented, tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "train.h5"
    write_table(path, augmented[1], kind="training")
    return path


@pytest.fixture(scope="module")
def model_file(training_file):
    dest = training_file.parent / "cvae.pt"
    summary = train(training_file, dest, TrainConfig(model=TINY_MODEL, epochs=15, batch_size=8,
                                                          learning_rate=3e-3))
    return dest, summary


# --- GMM transform --------------------------------------------------------------------

def test_gmm_1d_finds_modes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(2.0, 0.1, 500), rng.normal(5.0, 0.2, 500)])
    w, m, s = fit_gmm_1d(x, 2)
    assert np.allclose(m, [2.0, 5.0], atol=0.05)
    assert np.allclose(s, [0.1, 0.2], atol=0.03)
    assert np.allclose(w, [0.5, 0.5], atol=0.05)


def test_gmm_round_trip_and_torch_inverse():
    rng = np.random.default_rng(1)
    values = np.stack([rng.choice([0.0, 0.25, 0.5], 300) + rng.normal(0, 0.01, 300),
                       rng.normal(3.0, 1.0, 300), np.full(300, 90.0)], 1)
    gmm = ColumnGMM.fit(values, np.ones_like(values, bool), k=10)
    assert gmm.active[2].sum() == 1  # a constant column needs one component
    comp, resid = gmm.encode(values)
    assert np.allclose(gmm.inverse_numpy(comp, resid), values, atol=1e-9)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(comp), 10).double()
    back = gmm.inverse(onehot, torch.as_tensor(resid))
    assert np.allclose(back.numpy(), values, atol=1e-9)


def test_gmm_inverse_gradcheck():
    rng = np.random.default_rng(2)
    values = rng.normal(0, 1, (200, 3))
    gmm = ColumnGMM.fit(values, np.ones_like(values, bool), k=4)
    logits = torch.randn(5, 3, 4, dtype=torch.double, requires_grad=True)
    resid = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lg, r: gmm.inverse(torch.softmax(lg, -1), r),
                                    (logits, resid))


def test_free_mask_follows_symmetry():
    # graphite-like P6_3/mmc: hexagonal cell (a, c free); 2b and 2c have no free coordinate,
    # 4f (z free) has one
    from hpcxtal.crystal.symmetry import space_group

    labels = {wp.label: wp.index for wp in space_group(194).wyckoff}
    wps = -np.ones((1, 8), np.int64)
    wps[0, :3] = [labels["2b"], labels["2c"], labels["4f"]]
    mask = free_mask(np.array([194]), wps)[0]
    assert mask[:6].tolist() == [True, False, True, False, False, False]
    assert mask[6:15].tolist() == [False] * 6 + [False, False, True]
    assert not mask[15:].any()


# --- augmentation -----------------------------------------------------------------------

def test_augmentation_rows_are_the_same_crystal(augmented):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    src, out, stats = augmented
    assert stats["rows"] == len(out) > 2 * len(src)
    assert set(out["source_id"].tolist()) == set(src["id"].tolist())
    assert len(set(out["spg"].tolist())) > len(src)  # subgroup descriptions were found
    matcher = StructureMatcher()
    by_id = {int(src["id"][i]): src.row(i) for i in range(len(src))}
    for i in range(len(out)):
        row = out.row(i)
        again = decode(row.spg, row.cell, row.wps, row.xyz)  # stored rows decode unchanged
        assert np.allclose(again.xyz, row.xyz) and np.allclose(again.cell, row.cell)
        assert row.n_atoms() <= 500 and row.n_sites <= 8
        source = by_id[int(out["source_id"][i])]
        assert matcher.fit(to_structure(row), to_structure(source)), out["origin"][i]


def test_augmentation_is_deterministic_whatever_the_workers(augmented):
    src, out, _ = augmented
    again, _ = augment_table(src, TINY_AUG, workers=1)
    for name in ("spg", "wps", "cell", "xyz", "origin"):
        assert np.array_equal(again[name], out[name])


def test_generator_choices_are_orbit_members_on_the_generator(sacada):
    src = _small_sources(sacada, 1)
    row = src.row(0)
    for k in range(row.n_sites):
        choices = generator_choices(row, k)
        assert len(choices) >= 1
        assert any(np.allclose(c, row.xyz[k] % 1.0, atol=1e-6) for c in choices)


def test_fingerprint_tells_crystals_apart(sacada):
    src = _small_sources(sacada, 2)
    a, b = fingerprint(src.row(0)), fingerprint(src.row(1))
    assert a.matches(a) and not a.matches(b)


# --- conditions ------------------------------------------------------------------------

def test_check_condition_rules():
    from hpcxtal.crystal.symmetry import space_group

    g = {wp.label: wp.index for wp in space_group(194).wyckoff}
    ok = np.array([g["2b"], g["2c"], -1, -1, -1, -1, -1, -1])
    assert check_condition(194, ok) is None
    assert "fixed position" in check_condition(194, np.array([g["2b"], g["2b"]] + [-1] * 6))
    assert check_condition(194, np.array([g["4f"], g["4f"]] + [-1] * 6)) is None  # free z
    assert "not in space group" in check_condition(194, np.array([26] + [-1] * 7))
    assert "packed" in check_condition(194, np.array([-1, g["2b"]] + [-1] * 6))
    assert "atoms" in check_condition(229, np.array([0] * 6 + [-1] * 2))  # 6 x 96 atoms
    assert "no occupied" in check_condition(194, -np.ones(8, np.int64))


def test_condition_sampler_proposes_only_consistent_conditions(augmented):
    _, out, _ = augmented
    sampler = ConditionSampler.fit(out["spg"], out["wps"])
    rng = np.random.default_rng(0)
    learned = sampler.sample_learned(300, rng)
    assert all(check_condition(c[0], c[1:]) is None for c in learned)
    assert set(learned[:, 0].tolist()) <= set(out["spg"].tolist())
    assert (~sampler.is_training(learned)).any()  # proposes combinations not in training
    train_draw = sampler.sample_training(50, rng)
    assert sampler.is_training(train_draw).all()
    cond, source = sampler.sample(10, rng, "mix")
    assert len(cond) == 10 and sorted(set(source)) == ["learned", "train"]


# --- training and sampling -------------------------------------------------------------

def test_training_lowers_the_loss(model_file):
    _, summary = model_file
    losses = [h["loss"] for h in summary["history"]]
    assert summary["complete"] and losses[-1] < 0.8 * losses[0]


def test_resume_gives_the_same_model_as_an_uninterrupted_run(training_file, tmp_path):
    cfg = TrainConfig(model=TINY_MODEL, epochs=4, batch_size=8, seed=3)
    whole = train(training_file, tmp_path / "whole.pt", cfg)
    first = train(training_file, tmp_path / "split.pt", cfg, stop_after=2)
    assert not first["complete"] and not (tmp_path / "split.pt").exists()
    rest = train(training_file, tmp_path / "split.pt", cfg)
    assert rest["history"] == whole["history"]
    a = torch.load(tmp_path / "whole.pt", weights_only=True)["weights"]
    b = torch.load(tmp_path / "split.pt", weights_only=True)["weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another config"):
        train(training_file, tmp_path / "split.pt", dataclasses.replace(cfg, seed=4))


def test_sampling_writes_a_valid_pool(model_file, tmp_path):
    from hpcxtal.campaign import SampleConfig
    from hpcxtal.stages import sample_to_pool

    path, summary = model_file
    dest = tmp_path / "pool.h5"
    report = sample_to_pool(dest, SampleConfig(n=60, model=str(path)), seed=5)
    pool, quarantine = read_table(dest)
    assert report.counts == {"rows": len(pool), "quarantined": len(quarantine)}
    assert len(pool) + len(quarantine) == 60
    assert sorted(pool["id"].tolist() + quarantine["id"].tolist()) == list(range(60))
    assert len(pool) >= 50  # a trained CVAE under training conditions mostly decodes
    assert all(o == f"cvae:{summary['model_id']}" for o in pool["origin"])
    for i in range(len(pool)):
        row = pool.row(i)
        spg, sites = pool["condition"][i].split(":")
        assert int(spg) == row.spg and [int(w) for w in sites.split(",")] == row.wps[row.wps >= 0].tolist()
        assert check_condition(row.spg, row.wps) is None
    assert set(pool["condition_source"]) <= {"train", "learned"}
    again = read_table(dest)[0]
    assert np.array_equal(again["xyz"], pool["xyz"])


def test_sampling_is_reproducible(model_file):
    from hpcxtal.generate.sample import sample_pool

    a, _ = sample_pool(model_file[0], 20, seed=9)
    b, _ = sample_pool(model_file[0], 20, seed=9)
    assert np.array_equal(a["xyz"], b["xyz"]) and np.array_equal(a["cell"], b["cell"])


def test_decode_is_differentiable_in_z(model_file):
    from hpcxtal.generate.sample import Generator

    gen = Generator(model_file[0])
    z = torch.randn(4, gen.latent_dim, requires_grad=True)
    cond = gen.conditions.conditions[:4]
    values = gen.decode(z, torch.as_tensor(cond[:, 0]), torch.as_tensor(cond[:, 1:]))
    assert values.shape == (4, 30)
    values[:, 0].sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.model.parameters())  # frozen


def test_unconditional_vae_trains_and_samples(training_file, tmp_path):
    from hpcxtal.generate.sample import sample_pool

    cfg = TrainConfig(model=dataclasses.replace(TINY_MODEL, conditional=False), epochs=3,
                      batch_size=16)
    summary = train(training_file, tmp_path / "vae.pt", cfg)
    assert summary["kind"] == "vae"
    pool, quarantine = sample_pool(tmp_path / "vae.pt", 30, seed=1)
    assert len(pool) + len(quarantine) == 30
    assert all(o.startswith("vae:") for o in pool["origin"])
    assert all(check_condition(r.spg, r.wps) is None for r in pool.rows())


# --- campaign stage and CLI ------------------------------------------------------------

def test_campaign_sample_stage(model_file, tmp_path):
    from hpcxtal.campaign import Campaign, CampaignConfig, SampleConfig
    from hpcxtal.stages import PIPELINE, stage_spec

    assert PIPELINE[0].name == "sample" and not PIPELINE[0].per_shard
    cfg = CampaignConfig(name="t", sample=SampleConfig(n=30, model=str(model_file[0])))
    camp = Campaign.create(tmp_path / "c", cfg)
    assert "import" not in (camp.root / "campaign.yaml").read_text()
    report = stage_spec("sample").run(camp, None, False)
    assert report.counts["rows"] + report.counts["quarantined"] == 30
    assert stage_spec("import").run(camp, None, False).skipped  # sample wins
    assert stage_spec("sample").run(camp, None, False).skipped  # complete: not redone
    assert camp.manifest()["stages"]["sample"]["status"] == "done"
    stage_spec("shard").run(camp, None, False)
    assert len(list(camp.shard_dir.glob("shard-*.h5"))) == cfg.shard.n_shards


def test_sample_and_import_together_is_a_config_error(tmp_path):
    from hpcxtal.campaign import CampaignConfig
    from hpcxtal.config import ConfigError

    path = tmp_path / "campaign.yaml"
    path.write_text("name: x\nsample: {n: 10}\nimport: {inputs: [sacada]}\n")
    with pytest.raises(ConfigError, match="not both"):
        CampaignConfig.from_file(path)
    path.write_text("name: x\nsample: {n: 0}\n")
    with pytest.raises(ConfigError, match="n must be"):
        CampaignConfig.from_file(path)


def test_cli_prepare_train_sample(sacada, tmp_path, capsys):
    from hpcxtal.cli import main

    src = tmp_path / "src.h5"
    write_table(src, _small_sources(sacada, 1), kind="pool")
    train_h5, model, pool = tmp_path / "t.h5", tmp_path / "m.pt", tmp_path / "p.h5"
    assert main(["prepare", str(src), "-o", str(train_h5), "--max-reps", "2", "--choices", "2",
                 "--workers", "1", "-q"]) == 0
    from hpcxtal.store.hdf5 import file_summary

    assert file_summary(train_h5)["attrs"]["kind"] == "training"
    assert main(["train", str(train_h5), "-o", str(model), "--epochs", "2", "--hidden", "32",
                 "--latent", "4", "--components", "3", "--batch-size", "8", "-q"]) == 0
    assert main(["sample", "-n", "10", "--model", str(model), "-o", str(pool), "-q"]) == 0
    table, quarantine = read_table(pool)
    assert len(table) + len(quarantine) == 10
    assert main(["sample", "-n", "10", "--model", str(tmp_path / "none.pt"), "-o", str(pool)]) == 2
    assert "no generator model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["sample", "-n", "10"])
    assert err.value.code == 2


def test_campaign_samples_with_the_shipped_model_without_training(tmp_path):
    from hpcxtal.cli import main
    from hpcxtal.generate.sample import DEFAULT_MODEL

    assert DEFAULT_MODEL.stat().st_size < 4 * 2 ** 20  # small enough to ship
    camp = tmp_path / "c"
    assert main(["init", str(camp), "--sample", "40", "-q"]) == 0
    assert main(["sample", str(camp), "-q"]) == 0
    pool, quarantine = read_table(camp / "pool.h5")
    assert len(pool) + len(quarantine) == 40
    assert len(pool) >= 30 and all(o.startswith("cvae:") for o in pool["origin"])
    assert main(["import", str(camp), "-q"]) == 0  # sample wins: import does nothing
    with pytest.raises(SystemExit):  # a usage error
        main(["init", str(tmp_path / "d"), "--sample", "5", "--input", "sacada"])


def test_decode_values_gives_rows_or_reasons(model_file):
    from hpcxtal.generate.sample import Generator, decode_values

    gen = Generator(model_file[0])
    cond = gen.conditions.conditions[:3].copy()
    values = gen.decode(torch.zeros(3, gen.latent_dim), torch.as_tensor(cond[:, 0]),
                        torch.as_tensor(cond[:, 1:])).numpy()
    values[2, 0] = float("nan")  # a non-finite cell cannot decode
    out = decode_values(cond[:, 0], cond[:, 1:], values)
    assert out[0].spg == cond[0, 0] and np.array_equal(out[0].wps, cond[0, 1:])
    assert isinstance(out[2], str) and "finite" in out[2]
    bad = cond[:1].copy()
    bad[0, 1:] = -1
    assert decode_values(bad[:, 0], bad[:, 1:], values[:1]) == ["inconsistent condition: no occupied site"]
