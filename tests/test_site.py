import shutil
import subprocess
from pathlib import Path

import pytest

from hpcxtal.cli import main
from hpcxtal.config import ConfigError
from hpcxtal.hpc.jobs import render_job
from hpcxtal.hpc.mpi import mpi_library
from hpcxtal.hpc.site import load_site, shipped_sites

EXPECTED = Path(__file__).parent / "data" / "jobs"
SHIPPED = shipped_sites()


def test_every_shipped_site_config_is_valid():
    assert {"local", "local_slurm", "slurm_generic", "pbs_generic", "lonestar6_a100",
            "polaris_a100"} <= set(SHIPPED)
    for name in SHIPPED:
        site = load_site(name)
        assert site.name == name
        if site.scheduler != "local":
            assert site.gpu.partition and site.cpu.partition


def _render(site_name: str, executor: str, stage: str, n: int | None) -> str:
    camp = Path("/scratch/campaign")
    return render_job(load_site(site_name), executor, stage, camp, n,
                      camp / "jobs" / f"{stage}-shards.txt", camp / "jobs" / "logs",
                      command="hpcxtal")


@pytest.mark.parametrize("site_name,executor,stage,n", [
    ("slurm_generic", "gpu", "refine", 8), ("slurm_generic", "cpu", "relax", 4),
    ("polaris_a100", "gpu", "refine", 8), ("pbs_generic", "cpu", "relax", 1),
    ("slurm_generic", "cpu", "merge", None), ("pbs_generic", "cpu", "merge", None),
])
def test_rendered_scripts_match_saved_copies(site_name, executor, stage, n):
    """Scripts are compared whole with reviewed copies in tests/data/jobs."""
    expected = (EXPECTED / f"{site_name}-{executor}-{stage}-{n or 'whole'}.sh").read_text()
    assert _render(site_name, executor, stage, n) == expected


@pytest.mark.parametrize("site_name", ["pbs_generic", "polaris_a100", "slurm_generic", "lonestar6_a100"])
def test_rendered_scripts_pass_bash_syntax_check(site_name, tmp_path):
    """No PBS server exists here, so PBS scripts are checked by bash -n and directive form."""
    for executor, n in (("gpu", 3), ("cpu", 1), ("cpu", None)):
        script = tmp_path / f"{executor}.sh"
        script.write_text(_render(site_name, executor, "relax", n))
        subprocess.run(["bash", "-n", str(script)], check=True)
        directives = [l for l in script.read_text().splitlines() if l.startswith("#PBS")]
        for line in directives:
            assert line.split()[1].startswith("-"), line
        if directives and n and n > 1:
            assert f"#PBS -J 0-{n - 1}" in script.read_text()


def test_single_shard_pbs_job_is_not_an_array():
    assert "#PBS -J" not in _render("pbs_generic", "cpu", "relax", 1)


BAD = [
    ("name: s\nscheduler: slurm\ngpu: {partition: gpu}\ncpu: {partition: cpu, account: null}\n",
     "gpu: missing required key 'account'"),
    ("name: s\nscheduler: slurm\ngpu: {partition: gpu, account: a, queue: q}\n",
     "gpu: unknown key 'queue'; valid keys are"),
    ("name: s\ngpu: {cores_per_node: many}\n", "gpu.cores_per_node: expected int, got 'many'"),
    ("name: s\nscheduler: slurm\ngpu: {account: a}\ncpu: {partition: c, account: a}\n",
     "gpu.partition is required"),
    ("name: s\ncpu: {walltime: '2h'}\n", "walltime '2h' is not [D-]HH:MM:SS"),
    ("name: s\nscheduler: lsf\n", "scheduler 'lsf' is not one of"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_site_config_gives_one_clear_message(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_site(path)
    assert main(["site", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_site_check_prints_scripts(capsys):
    assert main(["site", "check", "polaris_a100"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "#PBS -A MyProject" in out and "#PBS -l filesystems=home:eagle" in out


def test_campaign_with_unknown_site_is_refused(tmp_path, capsys):
    main(["init", str(tmp_path / "c"), "-q"])
    cfg = tmp_path / "c" / "campaign.yaml"
    cfg.write_text(cfg.read_text().replace("site: local", "site: atlantis"))
    assert main(["status", str(tmp_path / "c")]) == 2
    assert "site 'atlantis'" in capsys.readouterr().err


def test_user_site_dir_is_searched_before_the_shipped_sites(tmp_path, monkeypatch):
    """HPCXTAL_SITE_DIR (one or more folders) holds a user's sites; a name there wins over
    a shipped site of the same name."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (other / "mycluster.yaml").write_text("name: mycluster\n")
    (mine / "local.yaml").write_text("name: local\ngpu: {cores_per_node: 7}\n")
    monkeypatch.setenv("HPCXTAL_SITE_DIR", f"{mine}:{other}")
    assert load_site("mycluster").name == "mycluster"
    assert load_site("local").gpu.cores_per_node == 7
    monkeypatch.delenv("HPCXTAL_SITE_DIR")
    assert load_site("local").gpu.cores_per_node != 7


def test_unknown_site_names_the_folders_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCXTAL_SITE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=f"no atlantis.yaml in {tmp_path}.*HPCXTAL_SITE_DIR"):
        load_site("atlantis")


def test_site_check_reports_the_mpi_library_mpi4py_is_bound_to(capsys):
    """This environment has the pip MPICH (make setup installs .[mpich]): site check names
    it and says to drop it on a cluster."""
    assert main(["site", "check", "local"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("MPI here:"))
    assert "bound to MPICH Version: " in line and "pip package mpich" in line


def test_mpi_library_without_mpi4py_or_with_a_hanging_mpi(tmp_path):
    """A Python without mpi4py (the system one, a real interpreter) and one whose MPI
    hangs on load (a stub that sleeps) each give one line, never an exception."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None or subprocess.run([system, "-c", "import mpi4py"]).returncode == 0:
        pytest.skip("no system python3 without mpi4py here")
    assert mpi_library(system).startswith("mpi4py not installed")
    stub = tmp_path / "python"
    stub.write_text("#!/bin/sh\nsleep 30\n")
    stub.chmod(0o755)
    assert "did not answer within 1 s" in mpi_library(str(stub), timeout=1)
