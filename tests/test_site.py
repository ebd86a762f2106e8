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
            "lonestar6_a100_small", "polaris_a100", "slurm_gpu_node", "pbs_gpu_node"} <= set(SHIPPED)
    for name in SHIPPED:
        site = load_site(name)
        assert site.name == name
        if site.scheduler != "local":
            assert site.gpu.queue_for(1) and site.cpu.queue_for(1)


def _render(site_name: str, executor: str, stage: str, n: int | None) -> str:
    camp = Path("/scratch/campaign")
    return render_job(load_site(site_name), executor, stage, camp, n,
                      camp / "jobs" / f"{stage}-shards.txt", camp / "jobs" / "logs",
                      command="hpcxtal")


SAVED = [
    ("slurm_generic", "gpu", "refine", 8), ("slurm_generic", "cpu", "relax", 4),
    ("polaris_a100", "gpu", "refine", 8), ("pbs_generic", "cpu", "relax", 1),
    ("slurm_generic", "cpu", "merge", None), ("pbs_generic", "cpu", "merge", None),
    ("polaris_a100", "gpu", "rounds", None), ("polaris_a100", "cpu", "relax", 6),
    ("lonestar6_a100", "gpu", "refine", 7), ("lonestar6_a100", "gpu", "rounds", None),
    ("lonestar6_a100_small", "gpu", "refine", 3),
    ("slurm_gpu_node", "gpu", "refine", 8), ("pbs_gpu_node", "cpu", "relax", 10),
]


@pytest.mark.parametrize("site_name,executor,stage,n", SAVED)
def test_rendered_scripts_match_saved_copies(site_name, executor, stage, n):
    """Scripts are compared whole with reviewed copies in tests/data/jobs."""
    expected = (EXPECTED / f"{site_name}-{executor}-{stage}-{n or 'whole'}.sh").read_text()
    assert _render(site_name, executor, stage, n) == expected


@pytest.mark.parametrize("site_name", [s for s in SHIPPED if load_site(s).scheduler != "local"])
def test_rendered_scripts_pass_bash_syntax_check(site_name, tmp_path):
    """No PBS server exists here, so PBS scripts are checked by bash -n and directive form."""
    for executor, n in (("gpu", 3), ("gpu", 9), ("cpu", 1), ("cpu", 40), ("cpu", None),
                        ("gpu", None)):
        script = tmp_path / f"{executor}.sh"
        script.write_text(_render(site_name, executor, "relax", n))
        subprocess.run(["bash", "-n", str(script)], check=True)
        directives = [l for l in script.read_text().splitlines() if l.startswith("#PBS")]
        for line in directives:
            assert line.split()[1].startswith("-"), line
        tasks = n and -(-n // load_site(site_name).executor(executor).shards_per_task)
        if directives and tasks and tasks > 1:
            assert f"#PBS -J 0-{tasks - 1}" in script.read_text()


def test_single_shard_pbs_job_is_not_an_array():
    assert "#PBS -J" not in _render("pbs_generic", "cpu", "relax", 1)


PACKED_SITE = """name: packed
scheduler: pbs
gpu:
  partition: q
  account: null
  cores_per_node: 12
  gpus_per_node: 4
  cores_per_task: 3
  shards_per_task: 4
  launch:
    gpu_order: [3, 2, 1, 0]
    shard_command: env SLOT_CPUS={cpus}
cpu: {partition: q, account: null}
"""


def test_packed_array_task_runs_its_shards_at_once_and_fails_if_one_fails(tmp_path):
    """The rendered script itself runs in bash (a PBS server cannot run here, so the array
    index is set by hand): task 1 of 6 shards packed 4 per task runs shards 4 and 5, each
    with its GPU (in gpu_order), its cores and 3 threads, and exits 1 because shard 5 fails."""
    site_file = tmp_path / "packed.yaml"
    site_file.write_text(PACKED_SITE)
    shard_list = tmp_path / "refine-shards.txt"
    shard_list.write_text("".join(f"{i}\n" for i in range(6)))
    fake = tmp_path / "fake-hpcxtal"
    fake.write_text('#!/bin/bash\necho "$4 gpu=$CUDA_VISIBLE_DEVICES cpus=$SLOT_CPUS '
                    'omp=$OMP_NUM_THREADS" >> "%s/ran.txt"\n[ "$4" != 5 ]\n' % tmp_path)
    fake.chmod(0o755)
    text = render_job(load_site(site_file), "gpu", "refine", tmp_path, 6, shard_list,
                      tmp_path / "logs", command=str(fake))
    assert "#PBS -J 0-1" in text and "select=1:ncpus=12:ngpus=4" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    run = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "PBS_ARRAY_INDEX": "1"})
    assert run.returncode == 1
    assert sorted((tmp_path / "ran.txt").read_text().splitlines()) == [
        "4 gpu=3 cpus=0-2 omp=3", "5 gpu=2 cpus=3-5 omp=3"]
    (tmp_path / "ran.txt").unlink()
    run = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "PBS_ARRAY_INDEX": "0"})
    assert run.returncode == 0
    assert len((tmp_path / "ran.txt").read_text().splitlines()) == 4


def test_polaris_queues_follow_job_size():
    """ALCF: prod takes 10-496 nodes, so array tasks (1 node) and small blocks go to
    preemptable, Parsl blocks of 10+ nodes to prod, and 497 nodes fit nowhere."""
    gpu = load_site("polaris_a100").gpu
    assert gpu.queue_for(1) == "preemptable" and gpu.queue_for(5) == "preemptable"
    assert gpu.queue_for(10) == "prod" and gpu.queue_for(30) == "prod"
    assert gpu.queue_for(497) is None


def test_parsl_config_carries_the_launcher_options(tmp_path):
    """Parsl's launcher gets the site's binding flag and overrides, workers the GPUs in the
    site's order, the queue follows the block size, the address the named interface."""
    from parsl.launchers import MpiExecLauncher

    from hpcxtal.hpc.parsl_config import make_executor

    text = (SHIPPED_SITE_TEXT("polaris_a100").replace("network_interface: bond0",
                                                      "network_interface: lo"))
    (tmp_path / "p.yaml").write_text(text)
    executor = make_executor(load_site(tmp_path / "p.yaml"), "gpu")
    launcher = executor.provider.launcher
    assert isinstance(launcher, MpiExecLauncher)
    line = next(l for l in launcher("CMD", 1, 10).splitlines() if l.startswith("mpiexec"))
    assert line.startswith("mpiexec --cpu-bind none --depth=64 --ppn 1 -n $WORKERCOUNT")
    assert list(executor.available_accelerators) == ["3", "2", "1", "0"]
    assert executor.provider.queue == "prod" and executor.address == "127.0.0.1"


def SHIPPED_SITE_TEXT(name: str) -> str:
    """The text of a shipped site config."""
    from hpcxtal.hpc.site import SHIPPED_SITE_DIR

    return (SHIPPED_SITE_DIR / f"{name}.yaml").read_text()


BAD = [
    ("name: s\nscheduler: slurm\ngpu: {partition: gpu}\ncpu: {partition: cpu, account: null}\n",
     "gpu: missing required key 'account'"),
    ("name: s\nscheduler: slurm\ngpu: {partition: gpu, account: a, queue: q}\n",
     "gpu: unknown key 'queue'; valid keys are"),
    ("name: s\ngpu: {cores_per_node: many}\n", "gpu.cores_per_node: expected int, got 'many'"),
    ("name: s\nscheduler: slurm\ngpu: {account: a}\ncpu: {partition: c, account: a}\n",
     "gpu.partition (or gpu.queues) is required"),
    ("name: s\ncpu: {walltime: '2h'}\n", "walltime '2h' is not [D-]HH:MM:SS"),
    ("name: s\nscheduler: lsf\n", "scheduler 'lsf' is not one of"),
    ("name: s\ngpu: {launch: {shard_command: 'taskset -c {cores_list}'}}\n",
     "gpu.launch: launch.shard_command 'taskset -c {cores_list}': unknown placeholder {cores_list}"),
    ("name: s\ngpu: {cores_per_node: 8, gpus_per_node: 2, shards_per_task: 4}\n",
     "shards_per_task 4 x 1 GPU(s) per process is more than gpus_per_node (2)"),
    ("name: s\ncpu: {cores_per_node: 8, shards_per_task: 2}\n",
     "shards_per_task 2 x 8 cores per process is more than cores_per_node (8); set cores_per_task"),
    ("name: s\ngpu: {cores_per_node: 8, gpus_per_node: 2, launch: {gpu_order: [1, 1]}}\n",
     "launch.gpu_order [1, 1] must list each GPU 0-1 once"),
    ("name: s\ngpu: {cores_per_node: 8, gpus_per_node: 2, launch: {ranks_per_node: 2}}\n",
     "more than one MPI rank needs an MPI launcher"),
    ("name: s\ngpu: {nodes_per_block: 2}\n",
     "gpu: rounds would run 2 node(s) x launch.ranks_per_node 1: more than one MPI rank needs"),
    ("name: s\nstages: {topology: gpu}\n",
     "stages.topology: gpu, but topology cannot use a GPU; only refine, rounds, relax, rescore can"),
    ("name: s\nstages: {polish: cpu}\n", "stages: unknown stage 'polish'; stages are"),
    ("name: s\nstages: {relax: tpu}\n", "stages.relax: 'tpu' is not 'gpu' or 'cpu'"),
    ("name: s\ngpu: {cores_per_node: 8, gpus_per_node: 4, gpus_per_task: 2, shards_per_task: 3}\n",
     "shards_per_task 3 x 2 GPU(s) per process is more than gpus_per_node (4)"),
    ("name: s\ngpu: {cores_per_node: 8, gpus_per_node: 4, gpus_per_task: 5}\n",
     "gpus_per_task must be within 1-4 (gpus_per_node), got 5"),
    ("name: s\nscheduler: pbs\ngpu: {account: a, nodes_per_block: 5, launcher: mpiexec, walltime: '03:00:00', "
     "queues: [{name: prod, min_nodes: 10}]}\ncpu: {partition: c, account: a}\n",
     "gpu.queues: no queue takes an array task of 1 node(s) for 03:00:00"),
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


def test_stages_move_between_executors_by_the_site():
    """Defaults as in the pipeline (gpu: refine, rounds); Polaris, whose nodes all have
    GPUs, relaxes there too; topology and merge stay on CPU nodes."""
    local, polaris = load_site("local"), load_site("polaris_a100")
    assert [local.stage_executor(s) for s in ("refine", "rounds", "relax", "topology")] == [
        "gpu", "gpu", "cpu", "cpu"]
    assert polaris.stage_executor("relax") == "gpu"
    assert polaris.stage_executor("topology") == polaris.stage_executor("merge") == "cpu"


def test_a_stage_on_gpu_nodes_runs_on_the_gpu_torch_sees(monkeypatch):
    """No GPU here: torch is told it sees one (the mock says so). Relax placed on Polaris's
    GPU nodes then gets device cuda (and with it the GPU edge budget); on the local site,
    or when torch sees no GPU, the config's device stays; a device already set wins."""
    import torch

    from hpcxtal.relax.engine import GPU_EDGE_BUDGET, default_edge_budget
    from hpcxtal.stages import Resources

    polaris, local = load_site("polaris_a100"), load_site("local")
    assert polaris.place("relax").device is None  # torch sees no GPU on this machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert polaris.place("relax").device == "cuda"
    assert default_edge_budget(polaris.place("relax").device) == GPU_EDGE_BUDGET
    assert polaris.place("topology").device is None and local.place("relax").device is None
    assert polaris.place("relax", Resources(device="cpu")).device == "cpu"


def test_a_submitted_relax_array_goes_where_the_site_places_it(tmp_path):
    """On Polaris the relax array goes to the GPU nodes' queue with 4 shards per node,
    one GPU each (submit renders with the site's executor for the stage)."""
    site = load_site("polaris_a100")
    text = render_job(site, site.stage_executor("relax"), "relax", tmp_path, 8,
                      tmp_path / "relax-shards.txt", tmp_path / "logs", command="hpcxtal")
    assert "select=1:ncpus=32:ngpus=4" in text and "GPUS=(3 2 1 0)" in text


def test_workers_with_several_gpus_each(tmp_path):
    """gpus_per_task 2 on a 4-GPU node: 2 workers per node, Parsl's workers and array
    slots each get two GPUs (in gpu_order) and half the cores."""
    from hpcxtal.hpc.parsl_config import make_executor

    path = tmp_path / "two.yaml"
    path.write_text(PACKED_SITE.replace("  cores_per_task: 3\n  shards_per_task: 4\n",
                                        "  gpus_per_task: 2\n  shards_per_task: 2\n"))
    site = load_site(path)
    assert site.gpu.workers_per_node() == 2 and site.gpu.task_cores() == 6
    assert site.gpu.worker_gpus() == ["3,2", "1,0"]
    executor = make_executor(site, "gpu")
    assert list(executor.available_accelerators) == ["3,2", "1,0"]
    assert executor.max_workers_per_node == 2
    text = render_job(site, "gpu", "refine", tmp_path, 4, tmp_path / "s.txt", tmp_path / "l",
                      command="hpcxtal")
    assert "GPUS=(3,2 1,0)" in text and "ngpus=4" in text and "its own 2 GPUs" in text


def test_rounds_job_spans_the_gpu_block_with_one_rank_per_gpu(tmp_path):
    """A SLURM site with 2-node GPU blocks and 2 GPUs per node: the rounds job asks for
    2 nodes and 4 tasks, 2 per node, one GPU each, started by srun; the Parsl MPI app asks
    for the same layout."""
    from hpcxtal.hpc.parsl_config import mpi_ranks

    path = tmp_path / "two_nodes.yaml"
    path.write_text("name: two\nscheduler: slurm\n"
                    "gpu: {partition: g, account: null, nodes_per_block: 2, cores_per_node: 8, "
                    "gpus_per_node: 2, launcher: srun, launch: {ranks_per_node: 2}}\n"
                    "cpu: {partition: c, account: null}\n")
    site = load_site(path)
    text = render_job(site, "gpu", "rounds", tmp_path, None, None, tmp_path / "l",
                      command="hpcxtal")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks=4", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --gpus-per-task=1",
                 f"exec srun --ntasks=4 --cpus-per-task=4 hpcxtal rounds {tmp_path}"):
        assert line in text.splitlines(), (line, text)
    assert mpi_ranks(site, "gpu") == {"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4}
    relax = render_job(site, "gpu", "relax", tmp_path, None, None, tmp_path / "l")
    assert "#SBATCH --nodes=1" in relax and "srun" not in relax  # not an MPI stage


def test_site_check_without_a_site_tabulates_every_shipped_site(capsys):
    assert main(["site", "check"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert f"{name} (" in out
    polaris = out[out.index("polaris_a100 ("):].split("\n\n")[0].splitlines()
    rows = {line.split()[0]: line.split() for line in polaris[2:]}
    assert rows["relax"][1:3] == ["gpu", "preemptable"] and rows["relax"][-2:] == ["1", "8"]
    assert rows["rounds"][1:4] == ["gpu", "prod", "4"] and "10 node(s)" in " ".join(rows["rounds"])
    assert rows["topology"][1] == "cpu"
