"""The generator plug-in interface and the model kinds behind it: diffusion beside the
(C)VAE; train, save with provenance, load any kind, sample, decode latent vectors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hpcxtal.generate.conditions import check_condition
from hpcxtal.generate.diffusion import DiffusionConfig, DiffusionGenerator
from hpcxtal.generate.gan import GANConfig, GANGenerator
from hpcxtal.generate.gmm import free_mask
from hpcxtal.generate.plugin import KINDS, load_generator, read_model_file
from hpcxtal.generate.sample import Generator, sample_pool
from hpcxtal.generate.train import TrainConfig, train
from hpcxtal.store.hdf5 import read_table

TINY_DIFFUSION = DiffusionConfig(hidden=64, n_hidden_layers=2, condition_embedding=16,
                                 time_embedding=8, steps=100, sample_steps=10)
DIFFUSION_TRAIN = TrainConfig(model=TINY_DIFFUSION, epochs=40, batch_size=16, learning_rate=3e-3)
TINY_GAN = GANConfig(latent_dim=8, hidden=32, condition_embedding=16, n_critic=2)


@pytest.fixture(scope="module")
def diffusion_file(small_training_file):
    dest = small_training_file.parent / "diffusion.pt"
    return dest, train(small_training_file, dest, DIFFUSION_TRAIN)


def test_every_kind_names_its_parts():
    for name, kind in KINDS.items():
        assert kind.part("config")().kind in (name, "cvae")  # ModelConfig() is the cvae
        assert kind.part("trainer") and kind.part("generator")


def test_the_shipped_model_loads_through_the_interface():
    gen = load_generator("default")
    assert isinstance(gen, Generator) and gen.kind == "cvae" and gen.latent_dim == 32
    assert gen.conditional and gen.origin.startswith("cvae:")
    assert len(gen.info["training_sha256"]) == 64 and gen.config["seed"] == gen.info["seed"]


def test_model_files_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no generator model file"):
        load_generator(tmp_path / "none.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an hpcxtal generator"):
        load_generator(tmp_path / "other.pt")
    _, blob = read_model_file("default")
    torch.save(dict(blob, kind="flow"), tmp_path / "flow.pt")
    with pytest.raises(ValueError, match="kind 'flow' unknown"):
        load_generator(tmp_path / "flow.pt")


def test_diffusion_trains_with_provenance(diffusion_file, small_training_file):
    path, summary = diffusion_file
    losses = [h["loss"] for h in summary["history"]]
    assert summary["complete"] and summary["kind"] == "diffusion"
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    gen = load_generator(path)
    assert isinstance(gen, DiffusionGenerator) and gen.origin == f"diffusion:{summary['model_id']}"
    assert gen.info["training_file"] == small_training_file.name
    assert gen.info["n_training_rows"] == len(read_table(small_training_file)[0])
    assert gen.config["model"] == dataclasses.asdict(TINY_DIFFUSION)


@pytest.mark.parametrize("model", [TINY_DIFFUSION, TINY_GAN], ids=["diffusion", "gan"])
def test_new_kinds_are_deterministic_and_resumable(model, small_training_file, tmp_path):
    cfg = dataclasses.replace(DIFFUSION_TRAIN, model=model, epochs=4, seed=2)
    whole = train(small_training_file, tmp_path / "whole.pt", cfg)
    again = train(small_training_file, tmp_path / "again.pt", cfg)
    assert again["model_id"] == whole["model_id"]
    first = train(small_training_file, tmp_path / "split.pt", cfg, stop_after=1)
    assert not first["complete"]
    rest = train(small_training_file, tmp_path / "split.pt", cfg)
    assert rest["model_id"] == whole["model_id"] and rest["history"] == whole["history"]
    other = train(small_training_file, tmp_path / "other.pt", dataclasses.replace(cfg, seed=3))
    assert other["model_id"] != whole["model_id"]


def test_diffusion_samples_respect_their_condition(diffusion_file):
    path, summary = diffusion_file
    pool, quarantine = sample_pool(path, 60, seed=4)
    assert len(pool) + len(quarantine) == 60 and len(pool) >= 50
    assert all(o == f"diffusion:{summary['model_id']}" for o in pool["origin"])
    for i in range(len(pool)):
        row = pool.row(i)
        spg, sites = pool["condition"][i].split(":")
        assert int(spg) == row.spg and [int(w) for w in sites.split(",")] == row.wps[row.wps >= 0].tolist()
        assert check_condition(row.spg, row.wps) is None
    again, _ = sample_pool(path, 60, seed=4)
    assert np.array_equal(again["cell"], pool["cell"]) and np.array_equal(again["xyz"], pool["xyz"])


def test_diffusion_decode_is_differentiable_and_fixes_what_the_condition_fixes(diffusion_file):
    gen = load_generator(diffusion_file[0], dtype=torch.float64)
    assert gen.latent_dim == 30 and gen.conditional
    cond = torch.as_tensor(gen.conditions.conditions[:6])
    z = torch.randn(6, 30, dtype=torch.float64, requires_grad=True)
    values = gen.decode(z, cond[:, 0], cond[:, 1:])
    assert values.shape == (6, 30) and values.dtype == torch.float64
    values[:, 0].sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    mask = free_mask(cond[:, 0].numpy(), cond[:, 1:].numpy())
    v = values.detach().numpy()
    assert np.all(v[:, 6:][~mask[:, 6:]] == 0.0)  # fixed coordinates are left to decode
    # a row's decoding does not depend on its batch (float64)
    one = gen.decode(z[:1].detach(), cond[:1, 0], cond[:1, 1:])
    assert torch.allclose(one, values[:1].detach(), atol=1e-12)


def test_diffusion_drives_latent_refinement(diffusion_file, small_training_file):
    from hpcxtal.descriptor.batch import build_batch
    from hpcxtal.descriptor.target import Environment
    from hpcxtal.refine.latent import LatentConfig, latent_refine

    pool, _ = sample_pool(diffusion_file[0], 40, seed=6, mode="train")
    env = Environment("graphite")
    batch = build_batch(pool)
    invalid = ~env.validity(batch, batch.R0).numpy()
    part = pool.take(np.flatnonzero(invalid)[:8])
    before = env.loss(build_batch(part), build_batch(part).R0).detach().numpy()
    cfg = LatentConfig(steps=15, generator=str(diffusion_file[0]))
    cell, xyz = latent_refine(part, env, cfg, seed=0, round_=2)
    part.columns.update(cell=cell, xyz=xyz)
    after_batch = build_batch(part)
    after = env.loss(after_batch, after_batch.R0).detach().numpy()
    assert np.median(after) < np.median(before)


def test_cli_trains_and_samples_each_kind(small_training_file, tmp_path):
    from hpcxtal.cli import main

    for kind in ("cvae", "vae", "diffusion", "gan"):
        model, pool = tmp_path / f"{kind}.pt", tmp_path / f"{kind}.h5"
        assert main(["train", str(small_training_file), "-o", str(model), "--model", kind,
                     "--epochs", "2", "--hidden", "32", "--batch-size", "16", "-q"]) == 0
        assert load_generator(model).kind == kind
        assert main(["sample", "-n", "12", "--model", str(model), "-o", str(pool), "-q"]) == 0
        table, quarantine = read_table(pool)
        assert len(table) + len(quarantine) == 12
        assert all(o.startswith(f"{kind}:") for o in table["origin"])
    with pytest.raises(SystemExit):
        main(["train", str(small_training_file), "-o", str(tmp_path / "x.pt"), "--model", "flow"])


def test_campaign_samples_from_a_diffusion_model(diffusion_file, tmp_path):
    from hpcxtal.campaign import Campaign, CampaignConfig, SampleConfig
    from hpcxtal.stages import stage_spec

    cfg = CampaignConfig(name="d", sample=SampleConfig(n=20, model=str(diffusion_file[0])))
    camp = Campaign.create(tmp_path / "c", cfg)
    report = stage_spec("sample").run(camp, None, False)
    assert report.counts["rows"] + report.counts["quarantined"] == 20
    pool, _ = read_table(camp.pool_path)
    assert all(o.startswith("diffusion:") for o in pool["origin"])


# --- generation metrics ------------------------------------------------------------------

def test_structure_checks_of_graphite_and_of_overlapping_atoms():
    from ase import Atoms

    from hpcxtal.generate.metrics import structure_checks

    graphite = Atoms("C4", scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25],
                                             [2 / 3, 1 / 3, 0.75]],
                     cell=[[2.464, 0, 0], [-1.232, 2.1339, 0], [0, 0, 6.711]], pbc=True)
    c = structure_checks(graphite)
    assert c.spg_found == 194 and c.n_primitive == 4 and c.valid
    assert 2.0 < c.density_g_cm3 < 2.4
    close = Atoms("C2", scaled_positions=[[0, 0, 0], [0.05, 0, 0]], cell=[6, 6, 6], pbc=True)
    assert not structure_checks(close).valid  # 0.3 Å apart
    tiny = Atoms("C", positions=[[0, 0, 0]], cell=[0.45, 3, 3], pbc=True)
    assert not structure_checks(tiny).valid  # an atom 0.45 Å from its own image


def test_pool_metrics_against_the_pool_itself_are_perfect(sacada):
    from hpcxtal.generate.metrics import pool_checks, pool_metrics

    table, _ = sacada
    pool = table.take(np.arange(12))
    m = pool_metrics(pool, 16, pool_checks(pool))
    assert m["decoded"] == 12 / 16 and m["stated_spg"] == 12 / 16 and m["valid"] == 12 / 16
    assert m["w_density"] == 0.0 and m["w_n_atoms"] == 0.0
    other = pool_metrics(pool.take(np.arange(6)), 6, pool_checks(pool))
    assert other["w_density"] > 0.0


def test_gan_samples_and_decodes(small_training_file, tmp_path):
    cfg = TrainConfig(model=TINY_GAN, epochs=6, batch_size=16, learning_rate=1e-3)
    summary = train(small_training_file, tmp_path / "gan.pt", cfg)
    assert summary["kind"] == "gan" and "wasserstein" in summary["history"][-1]
    gen = load_generator(tmp_path / "gan.pt", dtype=torch.float64)
    assert isinstance(gen, GANGenerator) and gen.latent_dim == 8
    assert not any(k.startswith("critic.") for k in torch.load(tmp_path / "gan.pt")["weights"])
    cond = torch.as_tensor(gen.conditions.conditions[:5])
    z = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    gen.decode(z, cond[:, 0], cond[:, 1:])[:, 0].sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    pool, quarantine = sample_pool(tmp_path / "gan.pt", 30, seed=2)
    assert len(pool) + len(quarantine) == 30
    assert all(check_condition(r.spg, r.wps) is None for r in pool.rows())


def test_reconstruction_of_training_rows_by_the_shipped_cvae(sacada):
    from hpcxtal.generate.metrics import reconstruction

    table, _ = sacada
    small = table.take(np.arange(10))
    r = reconstruction(load_generator("default"), small)
    assert r["n"] == 10 and 0.2 <= r["match_rate"] <= 1.0 and 0.0 <= r["rms"] < 0.5
    gen = load_generator("default")
    z = gen.encode(small)
    assert z.shape == (10, gen.latent_dim)


# --- coverage (CDVAE's COV-R / COV-P) and overlap ---------------------------------------

def _carbon(kind: str):
    from ase.build import bulk
    from ase import Atoms

    if kind == "diamond":
        return bulk("C", "diamond", a=3.567)
    return Atoms("C4", scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25],
                                         [2 / 3, 1 / 3, 0.75]],
                 cell=[[2.464, 0, 0], [-1.232, 2.1339, 0], [0, 0, 6.711]], pbc=True)


def test_fingerprints_see_the_coordination():
    from hpcxtal.generate.metrics import FINGERPRINT_LENGTH, structure_fingerprint

    assert FINGERPRINT_LENGTH == 61  # matminer's CrystalNNFingerprint "ops" preset
    graphite, diamond = structure_fingerprint(_carbon("graphite")), structure_fingerprint(_carbon("diamond"))
    assert graphite.shape == (61,) and diamond.shape == (61,)
    assert graphite[8] > 0.9 and graphite[9] > 0.9  # wt CN_3, trigonal planar CN_3
    assert diamond[12] > 0.9 and diamond[14] > 0.9  # wt CN_4, tetrahedral CN_4
    # a supercell has the same fingerprint (a site mean)
    np.testing.assert_allclose(structure_fingerprint(_carbon("diamond").repeat((2, 1, 1))), diamond,
                               atol=1e-6)


def test_a_set_covers_itself_and_not_a_disjoint_one():
    from hpcxtal.generate.metrics import coverage, structure_fingerprint

    g, d = structure_fingerprint(_carbon("graphite")), structure_fingerprint(_carbon("diamond"))
    same = coverage([g, d], ["C", "C"], [g, d], ["C", "C"], n_generated=2)
    assert same["cov_r"] == 1.0 and same["cov_p"] == 1.0 and same["amsd_r"] == 0.0
    apart = coverage([g], ["C"], [d], ["C"], n_generated=1)
    assert apart["cov_r"] == 0.0 and apart["cov_p"] == 0.0 and apart["amsd_p"] > 0.2
    # an undecoded sample (None) counts in COV-P's denominator only; another formula never covers
    half = coverage([g, None], ["C", ""], [g, d], ["C", "C"], n_generated=2)
    assert half["cov_r"] == 0.5 and half["cov_p"] == 0.5
    assert coverage([g], ["Si"], [g], ["C"], n_generated=1)["cov_r"] == 0.0


def test_overlap_of_distinct_structures():
    from pymatgen.io.ase import AseAtomsAdaptor

    from hpcxtal.generate.metrics import distinct, overlap

    g, d = (AseAtomsAdaptor.get_structure(_carbon(k)) for k in ("graphite", "diamond"))
    shifted = AseAtomsAdaptor.get_structure(_carbon("diamond").repeat((1, 1, 2)))
    mine = distinct([g, d, shifted])
    assert len(mine) == 2  # the diamond supercell is diamond
    assert overlap(mine, distinct([d])) == 1 and overlap(mine, mine) == 2
    assert overlap(distinct([g]), distinct([d])) == 0
