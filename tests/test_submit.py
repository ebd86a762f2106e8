"""Batch submission against the real local SLURM (scripts/local_slurm.sh)."""
import time

import pytest

from hpcxtal.campaign import Campaign
from hpcxtal.cli import main
from hpcxtal.hpc.site import load_site
from hpcxtal.hpc.submit import SubmitError, job_states, submit_command, submitted




def wait_for(campaign: Campaign, timeout: float = 180.0) -> dict[str, str]:
    """Poll the scheduler until every recorded job has left the queue."""
    site = campaign.site
    deadline = time.monotonic() + timeout
    while True:
        states = job_states(site, [j["job_id"] for j in submitted(campaign)])
        if all(not any(s in v for s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"))
               for v in states.values()):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still queued: {states}")
        time.sleep(2)


@pytest.mark.slurm
def test_chained_jobs_complete_and_a_second_submit_is_a_no_op(slurm_cluster, tmp_path, caplog):
    camp = tmp_path / "camp"
    main(["init", str(camp), "-q"])
    cfg = camp / "campaign.yaml"
    cfg.write_text(cfg.read_text().replace("site: local", "site: local_slurm"))
    assert main(["submit", str(camp), "-q"]) == 0
    jobs = submitted(Campaign(camp))
    assert [j["stage"] for j in jobs] == ["import", "shard"]
    script = (camp / "jobs" / "shard.sbatch").read_text()
    assert "#SBATCH --partition=cpu" in script
    states = wait_for(Campaign(camp))
    assert set(states.values()) == {"COMPLETED"}, states
    with caplog.at_level("INFO"):
        assert main(["submit", str(camp)]) == 0
    assert "nothing to submit" in caplog.text


def test_submit_command_shapes():
    site = load_site("local_slurm")
    assert submit_command(site, "x.sbatch", "12") == ["sbatch", "--parsable",
                                                      "--dependency=afterok:12", "x.sbatch"]
    assert submit_command(load_site("pbs_generic"), "x.pbs", "7.srv")[:3] == [
        "qsub", "-W", "depend=afterok:7.srv"]
    with pytest.raises(SubmitError, match="no scheduler"):
        submit_command(load_site("local"), "x", None)
