"""Free variables, index maps and reconstruction of crystals from R."""
import numpy as np
import pytest
import torch

from descriptor_reference import generated, sacada
from hpcxtal.crystal.freevars import ANGLE, COORD, LENGTH, layout
from hpcxtal.crystal.row import decode, to_pyxtal
from hpcxtal.crystal.symmetry import FREE_LATTICE_PARAMETERS, cell_matrix, expand_site, space_group
from hpcxtal.descriptor import build_batch, positions, rows_from_R
from hpcxtal.descriptor.batch import rows_of_batch


@pytest.mark.parametrize("spg", [1, 2, 15, 74, 142, 148, 167, 194, 227])
def test_layout_counts_and_orbits(spg):
    group = space_group(spg)
    wps = (0, len(group.wyckoff) - 1)
    lay = layout(spg, wps)
    n_lat = FREE_LATTICE_PARAMETERS[group.system]
    assert (lay.kind[:n_lat] != COORD).all() and (lay.kind[n_lat:] == COORD).all()
    assert lay.n_free == n_lat + sum(group.wyckoff[w].dof for w in wps)
    assert lay.n_atoms == sum(group.wyckoff[w].multiplicity for w in wps)
    # the maps give the orbit of expand_site for a random point of each site
    rng = np.random.default_rng(spg)
    xyz = -np.ones((8, 3))
    for slot, w in enumerate(wps):
        gen = group.wyckoff[w].generator
        xyz[slot] = gen[:, :3] @ rng.uniform(0, 1, 3) + gen[:, 3]
    cell = np.array([5.0, 6.0, 7.0, 80.0, 95.0, 100.0])
    row = decode(spg, cell, np.array(list(wps)), xyz[: len(wps)])
    batch = build_batch([row])
    frac = positions(batch, batch.R0).frac.numpy()
    ref = row.frac_positions()
    d = frac - ref
    assert np.allclose(d, np.round(d), atol=1e-12)


def test_maps_reproduce_every_wyckoff_orbit_of_all_230_groups():
    """For every group, one layout with all its Wyckoff positions: the per-atom maps
    applied to random free coordinates give expand_site's orbit of the generator."""
    rng = np.random.default_rng(0)
    for spg in range(1, 231):
        group = space_group(spg)
        lay = layout(spg, tuple(range(len(group.wyckoff))))
        R = rng.uniform(0, 1, lay.n_free)
        x = np.where(lay.site_src >= 0, R[np.maximum(lay.site_src, 0)], 0.0)  # (S, 3)
        frac = np.einsum("nij,nj->ni", lay.atom_M, x[lay.atom_site]) + lay.atom_c
        for s, wp in enumerate(group.wyckoff):
            assert np.allclose(lay.site_A[s] @ lay.site_A[s], lay.site_A[s])  # idempotent
            gen = lay.site_A[s] @ x[s] + lay.site_t[s]
            d = frac[lay.atom_site == s] - expand_site(wp, gen)
            assert np.allclose(d, np.round(d), atol=1e-12), (spg, wp.label)


def test_reconstruction_matches_pyxtal_for_every_sacada_row():
    table, _ = sacada()
    batch = build_batch(table)
    geo = positions(batch, batch.new_R())
    off = np.concatenate([[0], np.cumsum(batch.n_atoms.numpy())])
    for k in range(len(table)):
        atoms = to_pyxtal(table.row(k)).to_ase()
        assert np.allclose(atoms.cell.cellpar(), geo.cell[k].detach().numpy(), atol=1e-10)
        lattice = geo.lattice[k].detach().numpy()
        assert np.allclose(lattice, cell_matrix(table.row(k).cell), atol=1e-10)
        mine = geo.frac[off[k]:off[k + 1]].detach().numpy()
        ref = atoms.get_scaled_positions()
        assert mine.shape == ref.shape
        d = mine[:, None, :] - ref[None, :, :]
        d -= np.round(d)
        dist = np.linalg.norm(d @ lattice, axis=2)
        match = dist.argmin(1)
        assert len(set(match)) == len(ref)  # a one-to-one matching
        assert dist.min(1).max() < 1e-8
        cart = geo.cart[off[k]:off[k + 1]].detach().numpy()
        assert np.allclose(cart, mine @ lattice)


def test_free_variables_round_trip_through_rows():
    table = generated().take(np.arange(200))
    batch = build_batch(table)
    R = batch.R0 + 0.01 * (batch.kind == COORD) + 0.1 * (batch.kind == LENGTH) - 0.5 * (batch.kind == ANGLE)
    cell, xyz = rows_from_R(batch, R)
    again = build_batch(rows_of_batch(batch, R))
    # same positions up to lattice translations
    a = positions(batch, R).frac.numpy()
    b = positions(again, again.R0).frac.numpy()
    assert np.allclose(a - b, np.round(a - b), atol=1e-10)
    assert np.allclose(cell, positions(batch, R).cell.numpy())
    occupied = batch.wps >= 0
    assert np.all((xyz[occupied] >= 0) & (xyz[occupied] < 1)) and np.all(xyz[~occupied] == -1)


def test_lattice_constraints_follow_R():
    table, _ = sacada()
    batch = build_batch(table)
    geo = positions(batch, batch.R0)
    cell = geo.cell.numpy()
    assert np.allclose(cell, table["cell"], atol=1e-12)
    hexa = np.array([space_group(int(s)).system in ("hexagonal", "trigonal") for s in batch.spg])
    R = batch.R0.clone()
    R[batch.kind == LENGTH] *= 1.1
    cell2 = positions(batch, R).cell.numpy()
    assert np.allclose(cell2[hexa, 0], cell2[hexa, 1]) and np.allclose(cell2[hexa, 5], 120)
    assert np.allclose(cell2[:, :3], cell[:, :3] * 1.1)


def test_batch_moves_dtype_and_rejects_unpacked_rows():
    table, _ = sacada()
    batch = build_batch(table.take(np.arange(5)), dtype=torch.float32)
    assert batch.R0.dtype == torch.float32 and batch.atom_M.dtype == torch.float32
    assert batch.to(dtype=torch.float64).site_A.dtype == torch.float64
    assert batch.to(dtype=torch.float64).site_src.dtype == torch.int64
    row = table.row(0)
    wps = row.wps.copy()
    wps[1], wps[0] = wps[0], -1
    from hpcxtal.crystal.row import Row

    with pytest.raises(ValueError, match="packed"):
        build_batch([Row(row.spg, row.cell, wps, row.xyz)])


def test_take_selects_structures_in_any_order():
    from hpcxtal.descriptor import loss

    table = generated().take(np.arange(60))
    batch = build_batch(table)
    R = batch.R0 + 0.02 * (batch.kind == COORD)
    idx = np.array([41, 3, 17, 59, 0, 22])
    sub = batch.take(idx)
    assert torch.allclose(loss(sub, R[idx]), loss(batch, R)[idx], rtol=1e-12, atol=1e-14)
    direct = build_batch(table.take(idx))
    width = direct.R0.shape[1]  # the sub-batch keeps the full batch's width
    assert torch.equal(sub.R0[:, :width], direct.R0) and not sub.R0[:, width:].any()
    a = positions(sub, sub.R0).frac
    b = positions(direct, direct.R0).frac
    assert torch.allclose(a, b)
    assert torch.equal(sub.site_atom, direct.site_atom) and torch.equal(sub.atom_site, direct.atom_site)
