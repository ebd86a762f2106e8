"""Reference environments, the SO(3) loss and the coordination validity check."""
import dataclasses

import numpy as np
import pytest
import torch

from descriptor_reference import generated, pyxtal_so3, sacada
from hpcxtal.crystal.row import to_pyxtal
from hpcxtal.descriptor import Environment, build_batch, load_targets, loss, validity
from hpcxtal.descriptor.target import target_from_mapping


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _pyxtal_valid(row):
    return to_pyxtal(row).check_validity({"CN": {"C": [3]}, "cutoff": None})


def test_targets_load_and_reference_sites_agree():
    targets = load_targets()
    assert {"graphite", "diamond"} <= set(targets)
    g = targets["graphite"]
    assert g.reference.spg == 194 and g.cn == (3,) and g.cn_cutoff_A == 1.872
    env = Environment(g)
    ref = build_batch([g.reference])
    p = env.spectrum(ref, ref.R0)
    assert p.shape == (2, 15)
    assert torch.allclose(p[0], p[1], atol=1e-12)  # 2b and 2c have the same environment
    assert torch.all(env.loss(ref, ref.R0) < 1e-24)
    assert bool(env.validity(ref, ref.R0).all())


def test_diamond_is_a_config_change():
    env = Environment("diamond")
    d = build_batch([env.target.reference])
    assert bool(env.validity(d, d.R0).all())
    cn, nearest, _ = env.coordination(d, d.R0)
    assert cn.tolist() == [4] and abs(nearest.item() - 3.567 * np.sqrt(3) / 4) < 1e-9
    graphite = Environment()
    assert not bool(graphite.validity(d, d.R0).any())
    assert float(graphite.loss(d, d.R0)) > 1.0


def test_bad_target_entries_are_named():
    spec = {"species": "C", "spg": 194, "cell": [2.46, 2.46, 6.7, 90, 90, 120],
            "sites": [["2z", 0, 0, 0.25]], "cn": {"C": [3]}, "cn_cutoff_A": 1.872}
    with pytest.raises(ValueError, match="target odd: missing or unknown entry '2z'"):
        target_from_mapping("odd", spec)
    with pytest.raises(ValueError, match="unknown target 'sp1'; defined: .*graphite"):
        Environment("sp1")
    spec["sites"] = [["2b", 0, 0, 0.25]]
    del spec["cn_cutoff_A"]
    with pytest.raises(ValueError, match="cn_cutoff_A"):
        target_from_mapping("odd", spec)


def test_loss_is_pyxtals_objective():
    """sum over sites of multiplicity * |p - p_ref|^2 over the atom count, as
    pyxtal.lego.util.calculate_S computes it (reference from pyxtal too)."""
    from pyxtal import pyxtal

    table, _ = sacada()
    rows = table.take(np.arange(0, 144, 9))
    batch = build_batch(rows)
    mine = loss(batch, batch.R0).numpy()
    calc = pyxtal_so3()
    ref_x = pyxtal()
    ref_x.from_spg_wps_rep(194, ["2b", "2c"], [2.46, 6.70])
    ref_env = calc.compute_p(ref_x.to_ase(), [0])
    for k in range(len(rows)):
        xtal = to_pyxtal(rows.row(k))
        ids = np.cumsum([0] + [s.wp.multiplicity for s in xtal.atom_sites])[:-1]
        weights = np.array([s.wp.multiplicity for s in xtal.atom_sites], dtype=float)
        des = calc.compute_p(xtal.to_ase(resort=False), list(ids))
        expected = np.sum(np.sum((des - ref_env) ** 2, axis=1) * weights) / sum(xtal.numIons)
        assert abs(mine[k] - expected) <= 1e-9 * max(1.0, expected)


def test_validity_agrees_with_pyxtal_on_sacada():
    table, _ = sacada()
    batch = build_batch(table)
    ours = validity(batch, batch.R0).numpy()
    ref = np.array([_pyxtal_valid(table.row(k)) for k in range(len(table))])
    assert ref.all() and ours.all()


def test_validity_agrees_with_pyxtal_on_generated_rows():
    """CN semantics identical to pyxtal's check; the extra minimum-distance check only
    ever turns pyxtal-valid rows with an atom closer than min_distance_A invalid."""
    table = generated().take(np.arange(0, 951, 4))
    batch = build_batch(table)
    env = Environment()
    cn_only = Environment(dataclasses.replace(env.target, min_distance_A=0.0))
    ref = np.array([_pyxtal_valid(table.row(k)) for k in range(len(table))])
    assert ref.sum() > 0
    assert np.array_equal(cn_only.validity(batch, batch.R0).numpy(), ref)
    full = env.validity(batch, batch.R0).numpy()
    _, nearest, _ = env.coordination(batch, batch.R0)
    too_close = np.zeros(len(batch), bool)
    np.logical_or.at(too_close, batch.site_struct.numpy(), nearest.numpy() < env.target.min_distance_A)
    assert np.array_equal(full, ref & ~too_close)


def test_validity_flags_broken_geometry():
    table, _ = sacada()
    batch = build_batch(table.take(np.arange(3)))
    R = batch.R0.clone()
    R[1, 0] = float("nan")
    R[2, :] = 0.0
    out = validity(batch, R)
    assert out.tolist() == [True, False, False]
    # the loss of the sound row is unaffected by the broken ones
    assert torch.allclose(loss(batch, R)[0], loss(batch, batch.R0)[0])
