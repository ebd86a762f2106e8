"""Reference task (a), distance-matrix reconstruction: its pieces and the CLI run."""
import json

import numpy as np
import pytest
from conftest import one_line_error

from hpcxtal.bench.dm_reconstruction import fit_scale, noisy_matrix, sorted_entries
from hpcxtal.cli import main


@pytest.fixture(scope="module")
def diamond_like(sacada):
    """SACADA row 2 (space group 141, 8 atoms) as a pymatgen structure."""
    from hpcxtal.crystal.row import decode, to_structure

    table, _ = sacada
    k = int(np.flatnonzero(table["id"] == 2)[0])
    return to_structure(decode(int(table["spg"][k]), table["cell"][k], table["wps"][k],
                               table["xyz"][k]))


def test_fit_scale_recovers_the_size_of_a_scaled_structure(diamond_like):
    target = sorted_entries(diamond_like)
    blown_up = diamond_like.copy()
    blown_up.scale_lattice(diamond_like.volume * 1.3 ** 3)
    fitted = fit_scale(blown_up, target)
    assert fitted.volume == pytest.approx(diamond_like.volume, rel=1e-9)
    np.testing.assert_allclose(sorted_entries(fitted), target, atol=1e-9)


def test_noisy_matrix_has_the_asked_noise_and_stays_positive(diamond_like):
    dm = np.asarray(diamond_like.distance_matrix)
    assert noisy_matrix(dm, 0.0, np.random.default_rng(0)) is dm
    rng = np.random.default_rng(1)
    big = np.kron(np.ones((6, 6)), dm) + 5 * (1 - np.eye(48))  # 48 atoms: enough pairs
    noisy = noisy_matrix(big, 0.5, rng)
    off = ~np.eye(48, dtype=bool)
    assert np.array_equal(noisy, noisy.T) and np.all(np.diag(noisy) == 0)
    assert noisy[off].min() >= 0.1
    assert 0.4 < np.sqrt(np.mean((noisy[off] - big[off]) ** 2)) < 0.6
    # sorting can only bring the noisy list closer to the exact one
    assert np.sqrt(np.mean((np.sort(noisy[off]) - np.sort(big[off])) ** 2)) < 0.5


def test_every_prototype_decodes_back_to_itself():
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    from hpcxtal.crystal.row import decode, to_structure
    from hpcxtal.data.prototypes import PROTOTYPES, prototype_table

    table = prototype_table()
    assert list(table["id"]) == list(range(1, 9))
    assert [p.formula for p in PROTOTYPES] == ["NaCl", "CsCl", "CaF2", "TiO2", "SrTiO3",
                                               "MgAl2O4", "ZnO", "ZnS"]
    for k, proto in enumerate(PROTOTYPES):
        row = decode(int(table["spg"][k]), table["cell"][k], table["wps"][k], table["xyz"][k],
                     species=table["species"][k])
        assert row.spg == proto.spg, proto.name
        assert sorted(set(row.elements())) == sorted(set(proto.symbols)), proto.name
        truth = AseAtomsAdaptor.get_structure(proto.atoms())
        assert len(truth) == row.n_atoms()
        assert StructureMatcher().fit(truth, to_structure(row)), proto.name


def test_two_prototypes_are_recovered_from_their_exact_distance_matrix(tmp_path, capsys):
    cfg = tmp_path / "dm.yaml"  # rock salt (1 free variable) and rutile (3, two elements)
    cfg.write_text("source: prototypes\nn_structures: 4\nmax_atoms: 12\nnoise_rmse_A: [0.0]\n"
                   "starts: 4\nrefine: {max_steps: 200, restarts: 2}\n")
    out = tmp_path / "result.json"
    assert main(["benchmark", "dm-reconstruction", str(cfg), "-o", str(out), "-q"]) == 0
    records = {r["formula"]: r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {"NaCl", "CsCl", "CaF2", "TiO2"}
    for formula in ("NaCl", "TiO2"):
        assert records[formula]["refine"]["match"], formula
        assert records[formula]["refine"]["dm_rmse_A"] < 0.05, formula


def test_benchmark_runs_from_the_cli_with_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "dm.yaml"
    cfg.write_text("n_structures: 1\nmax_atoms: 8\nnoise_rmse_A: [0.0, 0.5]\nstarts: 2\n"
                   "refine: {max_steps: 30, restarts: 1}\n")
    out = tmp_path / "result.json"
    assert main(["benchmark", "dm-reconstruction", str(cfg), "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "refine" in printed and "random" in printed
    result = json.loads(out.read_text())
    assert [r["noise_rmse_A"] for r in result["records"]] == [0.0, 0.5]
    for rec in result["records"]:
        assert rec["id"] == 1 and rec["n_atoms"] == 8
        assert rec["random"]["evaluations"] == rec["refine"]["evaluations"] >= rec["starts"]
        assert rec["refine"]["match"]  # one free variable: the scale fit finds it
    assert set(result["summary"]) == {"0", "0.5"}


def test_a_bad_benchmark_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "dm.yaml"
    cfg.write_text("starts: 0\n")
    assert main(["benchmark", "dm-reconstruction", str(cfg)]) == 2
    assert "starts at least 1" in one_line_error(capsys.readouterr().err)
