import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

from hpcxtal.crystal.row import (DecodeError, decode, from_pyxtal, from_structure, to_atoms,
                                 to_pyxtal, to_structure)

GRAPHITE = dict(spg=194, cell=np.array([2.46, 2.46, 6.70, 90, 90, 120]),
                wps=np.array([10, 9, -1, -1, -1, -1, -1, -1]),  # 2b, 2c
                xyz=np.array([[0, 0, 0.25], [1 / 3, 2 / 3, 0.25]] + [[-1, -1, -1]] * 6))


def test_decode_graphite_and_expand():
    row = decode(**GRAPHITE)
    assert row.labels() == ["2b", "2c"]
    assert row.n_atoms() == 4
    atoms = to_atoms(row)
    assert len(atoms) == 4
    d = atoms.get_all_distances(mic=True)
    assert np.sort(d[0])[1] == pytest.approx(2.46 / np.sqrt(3), rel=1e-9)


@pytest.mark.parametrize("change,reason", [
    (dict(spg=231), "not an integer in 1-230"),
    (dict(spg=12.5), "not an integer"),
    (dict(wps=np.array([12, -1, -1, -1, -1, -1, -1, -1])), "Wyckoff index 12 not in space group 194"),
    (dict(cell=np.array([2.46, 2.46, -6.7, 90, 90, 120])), "cell lengths"),
    (dict(cell=np.array([2.46, 2.46, np.nan, 90, 90, 120])), "finite"),
    (dict(wps=-np.ones(8)), "no occupied Wyckoff site"),
])
def test_decode_rejects_bad_rows_with_reason(change, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(**{**GRAPHITE, **change})


def test_decode_rejects_impossible_triclinic_angles():
    with pytest.raises(DecodeError, match="positive volume|angles"):
        decode(1, np.array([3, 3, 3, 160, 160, 160.0]), [0] + [-1] * 7,
               [[0.1, 0.2, 0.3]] + [[-1, -1, -1]] * 7)


def test_decode_snaps_and_is_idempotent():
    raw = {**GRAPHITE, "cell": np.array([2.40, 2.52, 6.70, 90.3, 89.8, 120.5]),
           "xyz": np.array([[0.01, -0.02, 0.27], [0.34, 0.66, 0.23]] + [[-1, -1, -1]] * 6)}
    row = decode(**raw)
    assert list(row.cell) == pytest.approx([2.46, 2.46, 6.70, 90, 90, 120])
    assert row.xyz[0] == pytest.approx([0, 0, 0.25])
    assert row.snap_distance > 0
    again = decode(row.spg, row.cell, row.wps, row.xyz)
    assert again.xyz == pytest.approx(row.xyz, abs=1e-12)
    assert again.snap_distance == pytest.approx(0, abs=1e-9)


def test_padding_only_approximately_minus_one_is_empty():
    raw = {**GRAPHITE, "wps": np.array([10, 9, -1, 0, -1, -1, -1, -1]),
           "xyz": np.array([[0, 0, 0.25], [1 / 3, 2 / 3, 0.25], [0.2, 0.3, 0.4],
                            [-0.9998, -1.0, -0.99995]] + [[-1, -1, -1]] * 4)}
    row = decode(**raw)
    assert row.n_sites == 2


def test_sacada_rows_round_trip_through_pyxtal(sacada):
    """Every bundled row -> pyxtal -> row -> structure matches its source structure."""
    table, quarantine = sacada
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
    from pymatgen.io.ase import AseAtomsAdaptor

    mismatched = []
    for i in range(len(table)):
        row = from_pyxtal(to_pyxtal(table.row(i)))
        assert row.spg == table["spg"][i]
        source = AseAtomsAdaptor.get_structure(table.structures.atoms(i))
        if not matcher.fit(source, to_structure(row)):
            mismatched.append(int(table["id"][i]))
    assert mismatched == []
    assert len(table) == 144 and len(quarantine) == 6
    assert all("at most 8 fit a row" in r for r in quarantine["reason"])


def test_structure_needing_more_sites_is_refused_with_reason(sacada):
    _, quarantine = sacada
    with pytest.raises(DecodeError, match="Wyckoff sites; at most 8"):
        from_structure(quarantine.structures.atoms(0))


def test_from_structure_rejects_two_elements():
    atoms = to_atoms(decode(**GRAPHITE))
    atoms.numbers[0] = 5
    with pytest.raises(DecodeError, match="elements B, C"):
        from_structure(atoms)


@pytest.mark.parametrize("spg,cell", [
    (75, [0.0, 2.46, 5.0, 90, 90, 90]),  # mean 1.23 Å would pass
    (75, [-1.0, 10.0, 5.0, 90, 90, 90]),  # mean 4.5 Å would pass
    (221, [3.0, 3.0, 0.1, 90, 90, 90]),  # cubic mean 2.03 Å would pass
])
def test_decode_checks_raw_lengths_before_the_symmetry_mean(spg, cell):
    with pytest.raises(DecodeError, match="raw cell lengths"):
        decode(spg, np.array(cell), [0] + [-1] * 7, [[0.1, 0.2, 0.3]] + [[-1, -1, -1]] * 7)


def test_from_structure_quarantines_what_a_row_cannot_hold(cif_file, tmp_path):
    import ase.io
    from ase import Atoms

    def reason(atoms, **kw):
        with pytest.raises(DecodeError) as err:
            from_structure(atoms, **kw)
        return str(err.value)

    read = lambda path: ase.io.read(path, format="cif")  # noqa: E731
    assert "elements Si" in reason(read(cif_file(tmp_path / "si.cif", [("Si", 1.0)])))
    assert "mixed occupancy on site 0 (C 0.5, N 0.5)" in reason(
        read(cif_file(tmp_path / "cn.cif", [("C", 0.5), ("N", 0.5)])))
    assert "partial or mixed occupancy" in reason(read(cif_file(tmp_path / "half.cif", [("C", 0.5)])))
    molecule = Atoms("C2", positions=[[0, 0, 0], [0, 0, 1.4]])
    assert "no periodic 3D cell" in reason(molecule)
    overlap = Atoms("C2", scaled_positions=[[0, 0, 0], [0, 0, 0.02]], cell=[3, 3, 3], pbc=True)
    assert "overlap (0.060 Å apart" in reason(overlap)
    assert "elements C" in reason(to_atoms(decode(**GRAPHITE)), elements=["Si"])


def test_generator_rows_skip_the_raw_check_of_untrained_tied_columns():
    """A generator's b of a tetragonal row is not trained (free_mask): only the
    symmetrised cell is checked there."""
    sites = ([0] + [-1] * 7, [[0.1, 0.2, 0.3]] + [[-1, -1, -1]] * 7)
    row = decode(75, np.array([4.0, 0.2, 5.0, 10.0, 200.0, 90]), *sites, check_raw=False)
    assert list(row.cell) == pytest.approx([2.1, 2.1, 5.0, 90, 90, 90])


@pytest.mark.parametrize("tol", [-1.0, 0.0, 5.0, float("nan")])
def test_from_structure_refuses_a_tolerance_that_crashes_spglib(tol):
    with pytest.raises(ValueError, match="symmetry tolerance"):
        from_structure(to_atoms(decode(**GRAPHITE)), tol=tol)


def test_stored_row_problems_find_rows_that_bypassed_decode(synthetic):
    from hpcxtal.crystal.row import stored_row_problems

    t = synthetic(6)
    spg, cell, wps, xyz = (t[c].copy() for c in ("spg", "cell", "wps", "xyz"))
    spg[0], cell[1, 2], wps[2, 0], xyz[3, 0, 1] = 0, np.nan, 77, np.inf
    wps[4] = -1
    problems = stored_row_problems(spg, cell, wps, xyz)
    assert "space group 0" in problems[0] and "not finite or outside" in problems[1]
    assert "Wyckoff indices [77" in problems[2] and problems[3] == "non-finite coordinates"
    assert problems[4] == "no occupied Wyckoff site" and problems[5] == ""
