"""The Parsl campaign driver on the embedded default site and on a real local SLURM."""
import json

import pytest

from hpcxtal.cli import main
from hpcxtal.store.hdf5 import verify_file


def _check_done(camp):
    manifest = json.loads((camp / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("import", "shard"))
    for output in manifest["stages"]["shard"]["outputs"]:
        assert verify_file(camp / output) is None


def test_run_on_local_site_then_resume_is_a_no_op(tmp_path, caplog):
    camp = tmp_path / "camp"
    main(["init", str(camp), "-q"])
    assert main(["run", str(camp), "-q"]) == 0
    _check_done(camp)
    with caplog.at_level("INFO"):
        assert main(["resume", str(camp)]) == 0
    assert "import: complete already" in caplog.text
    assert "shard shard" not in caplog.text


@pytest.mark.slurm
def test_parsl_slurm_provider_runs_stages(slurm_cluster, tmp_path):
    camp = tmp_path / "camp"
    main(["init", str(camp), "-q"])
    assert main(["run", str(camp), "--site", "local_slurm", "-q"]) == 0
    _check_done(camp)
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
