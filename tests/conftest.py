"""Shared fixtures: reference data beside the repository (../shared/data) and small tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's reference data folder (CI clones the repo beside shared/)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def generated_csv(shared_data: Path) -> Path:
    return shared_data / "generated_candidates_1k.csv"


@pytest.fixture(scope="session")
def sacada():
    """The bundled SACADA table and its quarantine (structures that need > 8 sites)."""
    from hpcxtal.data import SACADA_PATH
    from hpcxtal.store.hdf5 import read_table

    return read_table(SACADA_PATH)


@pytest.fixture(scope="session")
def synthetic():
    """Factory of synthetic tables: ``synthetic(n, seed)``."""
    return synthetic_table


def synthetic_table(n: int, seed: int = 0):
    """``n`` random but well-formed rows over all 230 space groups."""
    from hpcxtal.crystal.symmetry import wyckoff_cost_tables
    from hpcxtal.store.table import Table, str_array

    rng = np.random.default_rng(seed)
    _, _, ok = wyckoff_cost_tables()
    n_wp = ok.sum(axis=1)
    spg = rng.integers(1, 231, n)
    n_sites = rng.integers(1, 9, n)
    wps = np.where(np.arange(8) < n_sites[:, None],
                   rng.integers(0, 10**6, (n, 8)) % n_wp[spg][:, None], -1)
    xyz = np.where((wps >= 0)[:, :, None], rng.random((n, 8, 3)), -1.0)
    cell = np.tile([5.0, 5.0, 5.0, 90.0, 90.0, 90.0], (n, 1))
    return Table({"id": np.arange(n, dtype=np.uint64), "spg": spg, "wps": wps, "cell": cell,
                  "xyz": xyz, "origin": str_array(["synthetic"] * n)})


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A running SLURM cluster (scripts/local_slurm.sh start); its SLURM_CONF path.

    Skips where none runs, unless HPCXTAL_REQUIRE_SLURM=1 (CI), where that fails."""
    import os
    import shutil
    import subprocess

    conf = os.environ.get("SLURM_CONF", "")
    ok = bool(shutil.which("sinfo")) and bool(conf) and subprocess.run(
        ["sinfo", "-h"], capture_output=True, env={**os.environ, "SLURM_CONF": conf}).returncode == 0
    if not ok:
        message = "no local SLURM cluster (run scripts/local_slurm.sh start as root)"
        if os.environ.get("HPCXTAL_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return conf


@pytest.fixture
def multinode_cluster(monkeypatch) -> str:
    """The two-node SLURM cluster (scripts/local_slurm_multinode.sh start), with SLURM_CONF
    pointed at it for this test; its SLURM_CONF path.

    Skips where it does not run, unless HPCXTAL_REQUIRE_SLURM_MULTINODE=1, where that fails."""
    import os
    import shutil
    import subprocess

    conf = os.environ.get("HPCXTAL_SLURM_MULTI_CONF", "/tmp/hpcxtal-slurm-multi/slurm.conf")
    proc = subprocess.run(["sinfo", "-h", "-p", "gpu", "-o", "%T %D"], capture_output=True,
                          text=True, env={**os.environ, "SLURM_CONF": conf}) \
        if shutil.which("sinfo") and os.path.exists(conf) else None
    up = proc is not None and proc.returncode == 0 and sum(
        int(n) for state, n in (l.split() for l in proc.stdout.splitlines())
        if state.rstrip("*") in ("idle", "mixed", "allocated")) >= 2
    if not up:
        message = ("no two-node SLURM cluster (run scripts/local_slurm_multinode.sh start as "
                   "root)")
        if os.environ.get("HPCXTAL_REQUIRE_SLURM_MULTINODE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setenv("SLURM_CONF", conf)
    return conf


def cif_text(sites: list[tuple[str, float]], a: float = 3.567) -> str:
    """A cubic diamond-type CIF (Fd-3m, 8a) whose one position holds ``sites``:
    (element, occupancy) pairs, so mixed and partial occupancy can be written."""
    lines = [f"C{k} {el} 0 0 0 {occ}" for k, (el, occ) in enumerate(sites)]
    return "\n".join([
        "data_test", *(f"_cell_length_{x} {a}" for x in "abc"),
        *(f"_cell_angle_{x} 90" for x in ("alpha", "beta", "gamma")),
        "_symmetry_space_group_name_H-M 'F d -3 m'", "_symmetry_Int_Tables_number 227",
        "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
        "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy", *lines, ""])


@pytest.fixture
def cif_file():
    """Factory: ``cif_file(path, sites)`` writes :func:`cif_text` to ``path``."""
    def write(path: Path, sites: list[tuple[str, float]]) -> Path:
        path.write_text(cif_text(sites))
        return path
    return write


@pytest.fixture
def cli(capsys):
    """Run ``hpcxtal ARGS`` in this process: ``cli(*args)`` -> (exit status, stdout,
    stderr); argparse's exits count as statuses."""
    from hpcxtal.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as err:
            code = err.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def one_line_error(err: str) -> str:
    """The single error line of a failed command's stderr (asserts there is one, with
    no traceback)."""
    lines = [line for line in err.strip().splitlines() if ": error:" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def small_pool_file(path: Path, n: int = 3, kind: str = "pool") -> Path:
    """A verified table file of ``n`` SACADA rows (with one quarantined row)."""
    from hpcxtal.data import SACADA_PATH
    from hpcxtal.store.hdf5 import read_table, write_table

    table, quarantine = read_table(SACADA_PATH)
    return write_table(path, table.take(np.arange(n)), kind=kind,
                       quarantine=quarantine.take(np.arange(1)))


@pytest.fixture(scope="session")
def small_training_file(sacada, tmp_path_factory) -> Path:
    """A training table of the bundled SACADA rows with at most 32 atoms (58 rows, no
    augmentation): enough for every generator kind to train on in seconds."""
    from hpcxtal.store.hdf5 import write_table

    table, _ = sacada
    atoms = np.array([table.row(i).n_atoms() for i in range(len(table))])
    path = tmp_path_factory.mktemp("training") / "small.h5"
    write_table(path, table.take(np.flatnonzero(atoms <= 32)), kind="training")
    return path
