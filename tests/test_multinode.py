"""Campaigns over two SLURM nodes: the cluster of scripts/local_slurm_multinode.sh, whose
nodes hxn1 and hxn2 are network and UTS namespaces of this machine (own hostname and
address, one slurmctld). The rounds stage runs as MPI ranks on both nodes, under
``hpcxtal submit`` (a 2-node batch job) and under ``hpcxtal run`` (a Parsl MPI app on a
2-node block), and gives what one process gives."""
import numpy as np
import pytest

from hpcxtal.campaign import Campaign
from hpcxtal.cli import main
from hpcxtal.layout import database_output, log_path, part_path, stage_output
from hpcxtal.stages import PIPELINE
from hpcxtal.store.hdf5 import read_table

from test_driver import _init, small_campaign_text  # noqa: F401  (fixture)
from test_submit import wait_for

pytestmark = [pytest.mark.multinode, pytest.mark.slow]
SITE = "local_slurm_multinode"


def _one_process(tmp_path, text, stages):
    """The campaign run stage by stage in this process (the reference)."""
    (tmp_path / "one").mkdir()
    camp = _init(tmp_path / "one", text)
    for stage in stages:
        assert main([stage, str(camp), "-q"]) == 0, stage
    return camp


def _tables_equal(a, b) -> None:
    (ta, _), (tb, _) = read_table(a), read_table(b)
    assert ta.columns.keys() == tb.columns.keys()
    for key, column in ta.columns.items():
        assert np.array_equal(column, tb.columns[key], equal_nan=column.dtype.kind in "fc"), (
            a.name, key)


def _hosts_of_rounds(camp) -> set[str]:
    """Hosts whose processes logged a rounds line in DIR/hpcxtal.log (time host pid ...)."""
    lines = log_path(camp).read_text().splitlines()
    return {l.split()[2] for l in lines if "hpcxtal.refine.rounds" in l}


def test_submitted_campaign_runs_rounds_on_both_nodes_and_equals_one_process(
        multinode_cluster, small_campaign_text, tmp_path):
    # every stage in turn (refine on a whole campaign runs the rounds too)
    one = _one_process(tmp_path, small_campaign_text,
                       [s.name for s in PIPELINE if s.name not in ("sample", "rounds")])
    (tmp_path / "two").mkdir()
    camp = _init(tmp_path / "two", small_campaign_text, site=SITE)
    assert main(["submit", str(camp), "-q"]) == 0
    states = wait_for(Campaign(camp), timeout=1200)
    assert all(v == "COMPLETED" or v.endswith("COMPLETED") for v in states.values()), states
    script = (camp / "jobs" / "rounds.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "exec srun --ntasks=2 " in script
    for r in (2,):  # round 2 was cut in two parts, one per rank
        assert all(part_path(camp, r, p, 2).exists() for p in range(2))
    assert _hosts_of_rounds(camp) == {"hxn1", "hxn2"}
    for i in range(2):
        _tables_equal(stage_output("rounds", one, i), stage_output("rounds", camp, i))
    _tables_equal(database_output(one), database_output(camp))


def _block_script(camp, label: str) -> str:
    """The batch script of Parsl's first block of executor ``label``."""
    scripts = [p for p in (camp / "runinfo").glob(f"*/submit_scripts/parsl.{label}.*")
               if p.suffix not in (".stdout", ".stderr")]
    assert scripts, f"Parsl submitted no {label} block"
    return scripts[0].read_text()


def test_parsl_run_on_two_node_blocks_gives_the_rounds_of_one_process(
        multinode_cluster, small_campaign_text, tmp_path):
    """Refinement on a 2-node block of the gpu executor (a worker pool per node), then
    rounds as a Parsl MPI app whose ranks span a 2-node block."""
    one = _one_process(tmp_path, small_campaign_text, ["import", "shard", "refine"])
    (tmp_path / "two").mkdir()
    camp = _init(tmp_path / "two", small_campaign_text, site=SITE)
    for stage in ("import", "shard"):
        assert main([stage, str(camp), "-q"]) == 0
    assert main(["run", str(camp), "--stage", "refine", "--stage", "rounds", "-q"]) == 0
    assert "#SBATCH --nodes=2" in _block_script(camp, "gpu")
    assert "#SBATCH --nodes=2" in _block_script(camp, "mpi")
    assert all(part_path(camp, 2, p, 2).exists() for p in range(2))
    assert _hosts_of_rounds(camp) == {"hxn1", "hxn2"}
    for i in range(2):
        _tables_equal(stage_output("rounds", one, i), stage_output("rounds", camp, i))
