"""The Parsl campaign driver on the embedded default site and on a real local SLURM."""
import pytest

from hpcxtal.campaign import Campaign
from hpcxtal.cli import main
from hpcxtal.merge.database import read_database
from hpcxtal.stages import PIPELINE

from test_relax import tiny_mace


@pytest.fixture(scope="module")
def small_campaign_text(generated_csv, tmp_path_factory):
    """Campaign YAML for 20 generated rows, short refinement, a tiny MACE model."""
    folder = tmp_path_factory.mktemp("small")
    csv = folder / "gen20.csv"
    csv.write_text("\n".join(generated_csv.read_text().splitlines()[:21]) + "\n")
    model = tiny_mace(folder / "tiny.model")
    return (f"name: small\nsite: local\nimport:\n  inputs: [{csv}]\nshard:\n  n_shards: 2\n"
            f"refine:\n  max_steps: 60\nrounds:\n  n_rounds: 2\n"
            f"relax:\n  backend: mace\n  model: {model}\n  max_steps: 3\n  steps_per_atom: 0\n")


def _init(tmp_path, text, site="local"):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.replace("site: local", f"site: {site}"))
    camp = tmp_path / "camp"
    assert main(["init", str(camp), "--config", str(cfg), "-q"]) == 0
    return camp


def _all_done(camp):
    campaign = Campaign(camp)
    return {spec.name: spec.done(campaign, None) for spec in PIPELINE}


def test_run_whole_pipeline_on_local_site_then_resume_is_a_no_op(small_campaign_text,
                                                                  tmp_path, caplog):
    model = small_campaign_text.split("model: ")[1].split("\n")[0]  # the rescore: same file
    camp = _init(tmp_path, small_campaign_text + "  fmax_eV_per_A: 1000\n"  # relax converges
                 f"rescore:\n  model: {model}\n  margin_eV: 100\n"
                 "  max_steps: 3\n  steps_per_atom: 0\n  fmax_eV_per_A: 1000\n")
    assert main(["run", str(camp), "-q"]) == 0
    assert all(_all_done(camp).values()), _all_done(camp)
    stages = Campaign(camp).manifest()["stages"]  # per-shard stages recorded by the driver
    assert all(stages[s]["status"] == "done" and stages[s]["shards_complete"] == 2
               for s in ("refine", "topology", "relax", "rescore")), stages
    db, _ = read_database(camp / "database.h5")  # merged from the rescore outputs
    assert (db["tier"] == "rescore").sum() == (db["status_rescore"] == "converged").sum() > 0
    with caplog.at_level("INFO"):
        assert main(["resume", str(camp)]) == 0
    assert "import: complete already" in caplog.text
    assert "relax shard 1: complete already" in caplog.text


@pytest.mark.slurm
def test_parsl_slurm_provider_runs_stages(slurm_cluster, small_campaign_text, tmp_path):
    camp = _init(tmp_path, small_campaign_text, site="local_slurm")
    assert main(["run", str(camp), "--stage", "import", "--stage", "shard", "-q"]) == 0
    done = _all_done(camp)
    assert done["import"] and done["shard"] and not done["refine"]
    scripts = [p for p in (camp / "runinfo").glob("*/submit_scripts/parsl.*")
               if p.suffix not in (".stdout", ".stderr")]
    assert scripts, "Parsl submitted no SLURM job"
    assert "#SBATCH --partition=" in scripts[0].read_text()


def test_unknown_stage_is_refused(tmp_path, capsys):
    camp = tmp_path / "camp"
    main(["init", str(camp), "-q"])
    with pytest.raises(SystemExit):
        main(["run", str(camp), "--stage", "polish"])
    assert "unknown stage 'polish'" in capsys.readouterr().err


def test_parsl_workers_are_pinned_to_their_cores(tmp_path, monkeypatch):
    """On the embedded default site each CPU worker gets one core and one OpenMP thread
    (real HighThroughputExecutor workers report what they were given)."""
    import os
    from pathlib import Path

    import parsl
    from parsl import python_app

    from hpcxtal.hpc.parsl_config import make_parsl_config
    from hpcxtal.hpc.site import load_site

    @python_app(executors=["cpu"])
    def given():
        import os

        return len(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS")

    site = load_site("local")
    if len(os.sched_getaffinity(0)) < site.executor("cpu").cores_per_node:
        pytest.skip("fewer cores here than site_configs/local.yaml names")
    # the workers unpickle ``given`` by reference to this module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    with parsl.load(make_parsl_config(site, tmp_path / "runinfo")):
        assert given().result(timeout=120) == (1, "1")
