"""Batch submission against the real local SLURM (scripts/local_slurm.sh)."""
import subprocess
import time

import pytest

from hpcxtal.campaign import Campaign
from hpcxtal.cli import main
from hpcxtal.hpc.site import apply_site, load_site
from hpcxtal.hpc.submit import SubmitError, job_states, submit_command, submitted
from hpcxtal.stages import stage_spec
from hpcxtal.layout import stage_output

from test_driver import small_campaign_text  # noqa: F401  (fixture)




def wait_for(campaign: Campaign, timeout: float = 180.0) -> dict[str, str]:
    """Poll the scheduler until every recorded job has left the queue."""
    site = apply_site(campaign)
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
    whole = ["--stage", "import", "--stage", "shard"]
    assert main(["submit", str(camp), *whole, "-q"]) == 0
    jobs = submitted(Campaign(camp))
    assert [j["stage"] for j in jobs] == ["import", "shard"]
    script = (camp / "jobs" / "shard.sbatch").read_text()
    assert "#SBATCH --partition=cpu" in script
    states = wait_for(Campaign(camp))
    assert set(states.values()) == {"COMPLETED"}, states
    with caplog.at_level("INFO"):
        assert main(["submit", str(camp), *whole]) == 0
    assert "nothing to submit" in caplog.text


def test_submit_command_shapes():
    site = load_site("local_slurm")
    assert submit_command(site, "x.sbatch", "12") == ["sbatch", "--parsable",
                                                      "--dependency=afterok:12", "x.sbatch"]
    assert submit_command(load_site("pbs_generic"), "x.pbs", "7.srv")[:3] == [
        "qsub", "-W", "depend=afterok:7.srv"]
    with pytest.raises(SubmitError, match="no scheduler"):
        submit_command(load_site("local"), "x", None)


@pytest.mark.slurm
def test_failed_array_task_is_resubmitted_alone(slurm_cluster, small_campaign_text, tmp_path):
    """A relax array task fails on a corrupted input; submitting again re-runs only that
    shard's chain (topology, then relax) as one-task arrays."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(small_campaign_text.replace("site: local", "site: local_slurm"))
    camp = tmp_path / "camp"
    main(["init", str(camp), "--config", str(cfg), "-q"])
    for stage in ("import", "shard", "refine", "rounds", "topology", "dedup"):
        assert main([stage, str(camp), "-q"]) == 0
    broken = stage_output("topology", camp, 1)
    with open(broken, "r+b") as fh:
        fh.truncate(broken.stat().st_size // 2)

    assert main(["submit", str(camp), "--stage", "relax", "-q"]) == 0
    (first,) = submitted(Campaign(camp))
    assert first["stage"] == "relax" and first["shards"] == [0, 1]
    states = wait_for(Campaign(camp))
    assert states[first["job_id"]] == "1 COMPLETED, 1 FAILED", states
    assert stage_spec("relax").done(Campaign(camp), 0)

    assert main(["submit", str(camp), "--stage", "topology", "--stage", "relax", "-q"]) == 0
    again = submitted(Campaign(camp))[1:]
    assert [(j["stage"], j["shards"]) for j in again] == [("topology", [1]), ("relax", [1])]
    assert "--dependency=afterok:" + again[0]["job_id"] in _sbatch_lines(again[1])
    wait_for(Campaign(camp))
    assert stage_spec("relax").done(Campaign(camp), None)


def _sbatch_lines(job: dict) -> str:
    """What the relax job was made to wait for: read from the scheduler itself."""
    out = subprocess.run(["scontrol", "show", "job", job["job_id"]], capture_output=True,
                         text=True).stdout
    return out.replace("Dependency=", "--dependency=").replace("(unfulfilled)", "")


PACKED_SLURM_SITE = """name: packed_slurm
scheduler: slurm
address: 127.0.0.1
gpu:
  partition: gpu
  account: null
  walltime: "00:30:00"
  cores_per_node: 2
  cores_per_task: 1
  shards_per_task: 2
  launcher: srun
  launch:
    shard_command: srun --exact --ntasks=1 --cpus-per-task={cores}
cpu:
  partition: cpu
  account: null
  walltime: "00:30:00"
  cores_per_node: 1
"""


@pytest.mark.slurm
def test_packed_array_task_refines_two_shards_as_srun_steps(slurm_cluster, small_campaign_text,
                                                             tmp_path):
    """A site that packs 2 shards per array task (its YAML in the campaign directory):
    refine over 2 shards is one array task whose two srun steps refine both shards."""
    camp = tmp_path / "camp"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(small_campaign_text.replace("site: local", "site: packed_slurm"))
    camp.mkdir()  # the site lives in the campaign directory; init checks it exists
    (camp / "packed_slurm.yaml").write_text(PACKED_SLURM_SITE)
    assert main(["init", str(camp), "--config", str(cfg), "-q"]) == 0
    for stage in ("import", "shard"):
        assert main([stage, str(camp), "-q"]) == 0
    assert main(["submit", str(camp), "--stage", "refine", "-q"]) == 0
    (job,) = submitted(Campaign(camp))
    assert job["shards"] == [0, 1]
    script = (camp / "jobs" / "refine.sbatch").read_text()
    assert "#SBATCH --array=0-0" in script and "#SBATCH --ntasks=2" in script
    states = wait_for(Campaign(camp))
    assert states[job["job_id"]] == "COMPLETED", states
    assert stage_spec("refine").done(Campaign(camp), None)
    log = next((camp / "jobs" / "logs").glob("refine-*.out")).read_text()
    assert "Traceback" not in log, log
