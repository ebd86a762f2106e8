"""Refinement rounds on real MPI ranks (mpiexec from the mpich wheel) vs one process."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcxtal.cli import main
from hpcxtal.layout import part_path, stage_output
from hpcxtal.store.hdf5 import read_table
from hpcxtal.store.shard import row_cost

pytestmark = pytest.mark.mpi
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")


def _campaign(path: Path, csv: Path) -> Path:
    main(["init", str(path), "--input", str(csv), "--shards", "3", "-q"])
    cfg = path / "campaign.yaml"
    text = cfg.read_text()
    assert "  max_steps: 1000" in text  # the refinement's default step cap
    text = text.replace("  max_steps: 1000", "  max_steps: 80")
    assert "  chunk_rows: 512" in text  # later rounds deal chunks of about 4 rows to the ranks
    text = text.replace("  chunk_rows: 512", "  chunk_rows: 4", 1)
    cfg.write_text(text.replace("rounds:\n  n_rounds: 1", "rounds:\n  n_rounds: 3"))
    main(["import", str(path), "-q"])
    main(["shard", str(path), "-q"])
    return path


def _valid(path: Path) -> list[tuple[int, int]]:
    out = []
    for i in range(3):
        table, _ = read_table(stage_output("rounds", path, i))
        out += [(int(r), int(k)) for r, k, v in zip(table["id"], table["round"], table["valid"]) if v]
    return sorted(out)


@pytest.fixture(scope="module")
def small_csv(generated_csv, tmp_path_factory):
    lines = generated_csv.read_text().splitlines()[:41]
    path = tmp_path_factory.mktemp("csv") / "gen40.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _mpi(n: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    if not os.path.exists(MPIEXEC):
        pytest.fail(f"mpiexec not found at {MPIEXEC}: install the mpich wheel (make setup)")
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcxtal.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_two_ranks_give_the_rows_of_one_process_and_resume(small_csv, tmp_path):
    serial = _campaign(tmp_path / "serial", small_csv)
    assert main(["refine", str(serial), "-q"]) == 0
    ranks = _campaign(tmp_path / "ranks", small_csv)
    proc = _mpi(2, "refine", str(ranks), "-q")
    assert proc.returncode == 0, proc.stderr
    assert _valid(ranks) == _valid(serial)
    assert any(r > 1 for _, r in _valid(serial)), "later rounds found nothing to compare"
    for i in range(3):  # the same batches whatever the ranks: the same numbers
        one, two = (read_table(stage_output("rounds", path, i))[0] for path in (serial, ranks))
        for column in ("cell", "xyz", "loss", "steps", "refine_status"):
            np.testing.assert_array_equal(one[column], two[column], err_msg=f"shard {i} {column}")
    # rebalancing: both ranks got a share of every later round, of comparable cost
    for r in (2, 3):
        parts = [read_table(part_path(ranks, r, p, 2))[0] for p in range(2)]
        costs = [float(row_cost(t["spg"], t["wps"]).sum()) for t in parts]
        assert min(map(len, parts)) > 0 and min(costs) > max(costs) / 2, costs
    # an interrupted run resumes at the first unfinished round
    kept = part_path(ranks, 2, 0, 2).stat().st_mtime_ns
    part_path(ranks, 3, 1, 2).unlink()
    for i in range(3):
        stage_output("rounds", ranks, i).unlink()
    proc = _mpi(2, "rounds", str(ranks), "-q")
    assert proc.returncode == 0, proc.stderr
    assert part_path(ranks, 2, 0, 2).stat().st_mtime_ns == kept
    assert _valid(ranks) == _valid(serial)


def test_a_failing_rank_stops_the_job_with_a_clear_error(small_csv, tmp_path):
    camp = _campaign(tmp_path / "c", small_csv)
    assert main(["refine", str(camp), "--shard", "0", "-q"]) == 0  # shards 1, 2 never refined
    proc = _mpi(2, "rounds", str(camp), timeout=120)
    assert proc.returncode != 0
    assert "round 1 is missing for shards [1, 2]" in proc.stderr
