import numpy as np
import pytest

from hpcxtal.crystal.symmetry import (cell_matrix, lattice_system, snap_to_wyckoff, space_group,
                                      symmetrize_cell)


def test_generators_are_idempotent_projections_in_all_groups():
    """The snapping and free-variable code relies on this property of pyxtal's tables."""
    for spg in range(1, 231):
        for wp in space_group(spg).wyckoff:
            a, t = wp.generator[:, :3], wp.generator[:, 3]
            assert np.allclose(a @ a, a), (spg, wp.label)
            shift = a @ t
            assert np.allclose(shift - np.round(shift), 0), (spg, wp.label)
            free = np.flatnonzero(wp.free)
            assert np.all(a[free, free] == 1), (spg, wp.label)
            assert len(wp.ops) == wp.multiplicity
        identity = np.hstack([np.eye(3), np.zeros((3, 1))])
        assert np.array_equal(space_group(spg).general_ops[0], identity), spg


@pytest.mark.parametrize("spg,system", [(1, "triclinic"), (14, "monoclinic"), (62, "orthorhombic"),
                                        (139, "tetragonal"), (166, "trigonal"), (194, "hexagonal"),
                                        (227, "cubic")])
def test_symmetrize_cell_imposes_constraints(spg, system):
    assert lattice_system(spg) == system
    raw = np.array([4.0, 4.2, 6.0, 89.0, 91.0, 119.0])
    cell = symmetrize_cell(spg, raw)
    if system in ("tetragonal", "trigonal", "hexagonal"):
        assert cell[0] == cell[1] == pytest.approx(4.1)
    if system == "cubic":
        assert cell[0] == cell[1] == cell[2]
    if system in ("trigonal", "hexagonal"):
        assert list(cell[3:]) == [90, 90, 120]
    if system == "triclinic":
        assert np.array_equal(cell, raw)
    assert symmetrize_cell(spg, cell) == pytest.approx(cell)


def test_cell_matrix_reproduces_parameters():
    cell = np.array([3.0, 4.0, 5.0, 80.0, 95.0, 105.0])
    m = cell_matrix(cell)
    lengths = np.linalg.norm(m, axis=1)
    assert lengths == pytest.approx(cell[:3])
    cos = [m[1] @ m[2] / (lengths[1] * lengths[2]), m[0] @ m[2] / (lengths[0] * lengths[2]),
           m[0] @ m[1] / (lengths[0] * lengths[1])]
    assert np.degrees(np.arccos(cos)) == pytest.approx(cell[3:])


def test_cell_matrix_rejects_impossible_angles():
    with pytest.raises(ValueError, match="positive volume"):
        cell_matrix(np.array([3.0, 3.0, 3.0, 150.0, 150.0, 150.0]))


def test_snap_finds_nearest_equivalent_generator():
    group = space_group(194)
    wp = next(w for w in group.wyckoff if w.label == "4f")  # (1/3, 2/3, z)
    matrix = cell_matrix(np.array([2.46, 2.46, 6.7, 90, 90, 120]))
    # An image of the generator (2/3, 1/3, 1/2 + z) slightly displaced.
    point = np.array([2 / 3 + 0.004, 1 / 3 - 0.003, 0.5 + 0.1])
    snapped, moved = snap_to_wyckoff(group, wp, point, matrix)
    assert moved < 0.05
    assert snapped[:2] == pytest.approx([1 / 3, 2 / 3])
    # Snapping a point already on the generator moves it nowhere.
    again, moved_again = snap_to_wyckoff(group, wp, snapped, matrix)
    assert moved_again == pytest.approx(0, abs=1e-12)
    assert again == pytest.approx(snapped)


def test_the_shipped_space_groups_equal_pyxtal_s():
    from hpcxtal.crystal.symmetry import SPACE_GROUP_TABLES, build_space_group_tables

    with np.load(SPACE_GROUP_TABLES) as shipped:
        built = build_space_group_tables()
        assert sorted(shipped.files) == sorted(built)
        for name, array in built.items():
            np.testing.assert_array_equal(shipped[name], array, err_msg=(
                f"{name}: regenerate hpcxtal/data/space_groups.npz (build_space_group_tables)"))


def test_the_wyckoff_cost_tables_follow_the_groups():
    from hpcxtal.crystal.symmetry import wyckoff_cost_tables

    mult, dof, ok = wyckoff_cost_tables()
    assert ok.sum() == 1731 and not ok[0].any()
    for spg in (1, 15, 191, 194, 227, 230):
        for wp in space_group(spg).wyckoff:
            assert ok[spg, wp.index] and mult[spg, wp.index] == wp.multiplicity == len(wp.ops)
            assert dof[spg, wp.index] == wp.dof
        assert not ok[spg, len(space_group(spg).wyckoff):].any()
