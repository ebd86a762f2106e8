"""Batched periodic neighbour lists against ASE's neighbor_list."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from descriptor_reference import sacada
from hpcxtal.descriptor import build_batch, positions
from hpcxtal.descriptor.neighbors import neighbor_pairs, pair_vectors, plane_reach


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ase_distances(atoms, cutoff):
    """Sorted neighbour distances of every atom from ASE."""
    i, d = neighbor_list("id", atoms, cutoff)
    return [np.sort(d[i == k]) for k in range(len(atoms))]


def _mine(images, centres, cutoff, **kw):
    """Pairs of a batch of Atoms through the flat interface; distances per centre."""
    frac = torch.tensor(np.concatenate([a.get_scaled_positions(wrap=False) for a in images]))
    lattice = torch.tensor(np.stack([a.cell.array for a in images]))
    struct = torch.repeat_interleave(torch.arange(len(images)), torch.tensor([len(a) for a in images]))
    centre_atom = torch.tensor(centres)
    pairs = neighbor_pairs(frac, lattice, struct, centre_atom, cutoff, **kw)
    dist = torch.linalg.norm(pair_vectors(pairs, frac, lattice, struct, centre_atom), dim=1).numpy()
    return [np.sort(dist[pairs.centre.numpy() == c]) for c in range(len(centres))]


def _assert_same(mine, ref):
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref):
        assert len(a) == len(b)
        assert np.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("cutoff", [1.872, 2.0, 3.5])
def test_sacada_rows_site_centres(cutoff):
    table, _ = sacada()
    batch = build_batch(table)
    geo = positions(batch, batch.R0)
    from hpcxtal.descriptor.batch import neighbors, site_pair_vectors

    pairs = neighbors(batch, batch.R0, cutoff)
    dist = torch.linalg.norm(site_pair_vectors(batch, batch.R0, pairs), dim=1).numpy()
    off = np.concatenate([[0], np.cumsum(batch.n_atoms.numpy())])
    for k in range(len(batch)):
        frac = geo.frac[off[k]:off[k + 1]].numpy()
        atoms = Atoms("C" * len(frac), scaled_positions=frac % 1.0,
                      cell=geo.lattice[k].numpy(), pbc=True)
        ref = _ase_distances(atoms, cutoff)
        sites = (batch.site_struct == k).nonzero().flatten().numpy()
        mine = [np.sort(dist[pairs.centre.numpy() == s]) for s in sites]
        _assert_same(mine, [ref[a - off[k]] for a in batch.site_atom[sites].numpy()])


def test_sacada_structures_all_atoms_in_one_batch():
    table, quarantine = sacada()
    images = [table.structures.atoms(i) for i in range(len(table))]
    images += [quarantine.structures.atoms(i) for i in range(len(quarantine))]
    centres, off = [], 0
    ref = []
    for a in images:
        centres += list(range(off, off + len(a)))
        ref += _ase_distances(a, 2.0)
        off += len(a)
    _assert_same(_mine(images, centres, 2.0), ref)
    # a tiny chunk budget gives the same pairs
    _assert_same(_mine(images, centres, 2.0, max_candidates=5000), ref)


def _tiny_and_skewed():
    rng = np.random.default_rng(7)
    cells = [
        np.diag([1.1, 1.3, 0.9]),  # shorter than the cutoff along every axis
        np.array([[2.5, 0, 0], [2.3, 0.4, 0], [0.3, 0.2, 2.6]]),  # very skewed
        np.array([[1.0, 0, 0], [-0.97, 0.25, 0], [0.1, 0.1, 30.0]]),  # flat needle
        np.array([[3.0, 0, 0], [2.95, 0.2, 0], [2.9, 0.15, 0.3]]),  # nearly degenerate
        np.diag([0.6, 20.0, 20.0]),  # a 1D chain of near neighbours
    ]
    images = []
    for k, cell in enumerate(cells):
        n = 1 + k % 3
        images.append(Atoms("C" * n, scaled_positions=rng.uniform(-0.3, 1.3, (n, 3)),
                            cell=cell, pbc=True))
    return images


def test_tiny_and_skewed_cells():
    images = _tiny_and_skewed()
    lattice = torch.tensor(np.stack([a.cell.array for a in images]))
    reach, ok = plane_reach(lattice, 2.0)
    assert ok.all() and (reach > 1.5).any()  # more than one shell of images is needed
    centres = list(range(sum(len(a) for a in images)))
    ref = []
    for a in images:
        ref += _ase_distances(a, 2.0)
    assert max(len(r) for r in ref) > 50
    _assert_same(_mine(images, centres, 2.0), ref)
    _assert_same(_mine(images, centres, 2.0, max_candidates=64), ref)


def test_coincident_atoms_are_neighbours_and_self_is_not():
    atoms = Atoms("C3", positions=[[0, 0, 0], [0, 0, 0], [1.0, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    mine = _mine([atoms], [0, 1, 2], 1.5)
    _assert_same(mine, _ase_distances(atoms, 1.5))
    assert list(mine[0]) == [0.0, 1.0]


def test_unsearchable_cells_are_flagged_not_fatal():
    good = Atoms("C2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 2.0, pbc=True)
    frac = torch.tensor(np.concatenate([good.get_scaled_positions()] * 3))
    lattice = torch.tensor(np.stack([good.cell.array, np.zeros((3, 3)), np.diag([1e-5, 5.0, 5.0])]))
    struct = torch.tensor([0, 0, 1, 1, 2, 2])
    pairs = neighbor_pairs(frac, lattice, struct, torch.arange(6), 2.0)
    assert pairs.searched.tolist() == [True, False, False]
    assert set(pairs.centre.tolist()) == {0, 1}


def _same_pairs(a, b) -> None:
    for name in ("centre", "atom", "shift", "searched"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_kept_and_replaced_rows_give_the_pairs_a_fresh_search_gives(generated_csv):
    """A batch's list with some rows taken out, or some rows searched again at moved
    geometry, is the list a search of the whole batch gives: same pairs, same order."""
    from hpcxtal.descriptor.batch import neighbors, replace_pairs, take_pairs
    from hpcxtal.store.formats import read_csv

    table, _ = read_csv(generated_csv)
    batch = build_batch(table.take(np.arange(12)))
    R0 = batch.R0
    idx = torch.tensor([1, 4, 5, 9])
    found = neighbors(batch, R0, 2.5)
    _same_pairs(take_pairs(batch, found, idx), neighbors(batch.take(idx), R0[idx], 2.5))
    moved = R0.clone()
    moved[idx] += 0.01 * (batch.kind[idx] > 0)  # a small step of the free variables
    again = replace_pairs(batch, found, idx, neighbors(batch.take(idx), moved[idx], 2.5))
    _same_pairs(again, neighbors(batch, moved, 2.5))
