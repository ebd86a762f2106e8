"""File-mode workers: chunk plans, row-order reassembly, failures, and stage outputs that
do not depend on the number of worker processes."""
from __future__ import annotations

import os

import numpy as np
import pytest

from hpcxtal.cli import main
from hpcxtal.parallel import WorkerError, Workers, default_workers, gather, plan_chunks
from hpcxtal.refine.represent import RefineConfig
from hpcxtal.stages import Resources, stage_spec
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table
from hpcxtal.topology.stage import TopologyConfig


def assert_same_files(a, b) -> None:
    """Two stage outputs hold the same rows, in the same order, with equal values in
    every column and the same structures."""
    ta, qa = read_table(a)
    tb, qb = read_table(b)
    assert list(ta.columns) == list(tb.columns)
    for name in ta.columns:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)
    assert (ta.structures is None) == (tb.structures is None)
    if ta.structures is not None:
        for field in ("natoms", "lattice", "frac", "numbers"):
            np.testing.assert_array_equal(getattr(ta.structures, field),
                                          getattr(tb.structures, field), err_msg=field)
    assert (qa is None) == (qb is None) and (qa is None or len(qa) == len(qb))


def test_chunks_cover_every_row_once_in_order_with_balanced_cost():
    rng = np.random.default_rng(0)
    order = rng.permutation(100)
    cost = rng.uniform(1, 3, 100)
    chunks = plan_chunks(order, cost, 7)
    assert len(chunks) == 7 and all(len(c) for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), order)  # contiguous runs of order
    sums = [cost[np.isin(order, c)].sum() for c in chunks]
    assert max(sums) - min(sums) <= 2 * cost.max()
    few = plan_chunks(order[:3], cost[:3], 7)  # never more chunks than rows, none empty
    assert 1 <= len(few) <= 3 and all(len(c) for c in few)
    assert [len(c) for c in plan_chunks(np.zeros(0), np.zeros(0), 4)] == [0]


def test_gather_puts_results_back_in_row_order():
    table = Table({"id": np.arange(6, dtype=np.uint64), "x": np.arange(6) * 10})
    chunks = [np.array([4, 5]), np.array([0, 2]), np.array([1, 3])]
    out = gather(6, chunks, [table.take(c) for c in chunks])
    np.testing.assert_array_equal(out["x"], table["x"])
    with pytest.raises(ValueError, match="exactly once"):
        gather(6, chunks[:2], [table.take(c) for c in chunks[:2]])


def test_default_workers_one_per_core_on_a_cpu_one_on_a_gpu(monkeypatch):
    assert default_workers("cpu") == len(os.sched_getaffinity(0))
    assert default_workers("cuda:0") == 1
    monkeypatch.setattr("hpcxtal.parallel._CUDA_NODES", ())  # no device node: no GPU
    assert default_workers("auto") == len(os.sched_getaffinity(0))


def test_a_file_mode_main_process_does_not_import_torch(rows_file, tmp_path):
    """Torch's import is seconds of start-up: the main process of a refine with workers
    only plans chunks and writes the file, so it must not pay it (the workers do)."""
    import subprocess
    import sys

    from test_faults import env

    code = ("import sys; from hpcxtal.cli import main\n"
            "try: main(sys.argv[1:])\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, "refine", str(rows_file), "-o",
                           str(tmp_path / "out.h5"), "-j", "2", "--chunk-rows", "4", "-q",
                           "--steps", "5"], capture_output=True, text=True, env=env(), check=True)
    assert done.stdout.split()[-1] == "False", done.stderr
    assert read_table(tmp_path / "out.h5")[0]["steps"].max() > 0


@pytest.mark.parametrize("section", ["refine", "relax"])
def test_workers_reach_the_section_and_bad_values_are_refused(section):
    from hpcxtal.relax.config import RelaxConfig

    cls = {"refine": RefineConfig, "relax": RelaxConfig}[section]
    assert Resources(workers=3).apply(cls()).workers == 3
    assert cls().workers is None  # default: decided by the machine
    with pytest.raises(ValueError, match="workers must be at least 1"):
        cls(workers=0)
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        cls(chunk_rows=0)


def test_mpi_ranks_take_one_worker_each_unless_told():
    from types import SimpleNamespace

    from hpcxtal.cli.stages import _rank_resources

    campaign = SimpleNamespace(config=SimpleNamespace(refine=RefineConfig(device="cpu")))
    ranks = SimpleNamespace(Get_size=lambda: 4)
    assert _rank_resources(campaign, ranks).workers == 1
    assert _rank_resources(campaign, ranks, 2).workers == 2
    assert _rank_resources(campaign, None).workers is None  # one process: all cores


def _failing_kernel(cfg):
    """A chunk kernel that fails on the row with id ``cfg``."""
    def kernel(table):
        if cfg in table["id"]:
            raise ValueError(f"cannot do row {cfg}\nsecond line")
        return table
    return kernel


def _dying_kernel(cfg):
    """A chunk kernel whose process dies (as if killed) on its first chunk."""
    def kernel(table):
        os._exit(3)
    return kernel


def test_a_failing_worker_gives_one_line_naming_its_rows():
    table = Table({"id": np.arange(8, dtype=np.uint64)})
    chunks = plan_chunks(np.arange(8), np.ones(8), 4)
    with pytest.raises(WorkerError) as err:
        Workers(_failing_kernel, 5, 2, "test").map(table, chunks)
    message = str(err.value)
    assert "\n" not in message
    assert "chunk of 2 rows (ids 4, 5)" in message and "ValueError: cannot do row 5" in message
    with pytest.raises(WorkerError, match="worker process died"):
        Workers(_dying_kernel, None, 2, "test").map(table, chunks)


@pytest.fixture(scope="module")
def rows_file(generated_csv, tmp_path_factory):
    """24 generated rows (many layouts) as a pool file."""
    from hpcxtal.store.formats import read_csv

    table, _ = read_csv(generated_csv)
    path = tmp_path_factory.mktemp("rows") / "rows.h5"
    write_table(path, table.take(np.arange(24)), kind="pool")
    return path


def test_refine_with_one_or_two_workers_writes_the_same_file(rows_file, tmp_path):
    cfg = RefineConfig(max_steps=40, restarts=2, chunk_rows=8)  # 3 chunks
    for j in (1, 2):
        stage_spec("refine").run_file(rows_file, tmp_path / f"j{j}.h5", cfg, Resources(workers=j))
    assert_same_files(tmp_path / "j1.h5", tmp_path / "j2.h5")


def test_topology_with_one_or_two_workers_writes_the_same_file(rows_file, tmp_path):
    for j in (1, 2):
        stage_spec("topology").run_file(rows_file, tmp_path / f"j{j}.h5", TopologyConfig(),
                                        Resources(workers=j))
    assert_same_files(tmp_path / "j1.h5", tmp_path / "j2.h5")


def test_relax_with_one_or_two_workers_writes_the_same_file(tmp_path):
    from hpcxtal.data import SACADA_PATH
    from hpcxtal.relax.config import RelaxConfig

    from test_relax import tiny_mace

    table, _ = read_table(SACADA_PATH)
    small = table.take(np.argsort(table.structures.natoms, kind="stable")[:6])
    write_table(tmp_path / "small.h5", small, kind="pool")
    cfg = RelaxConfig(model=str(tiny_mace(tmp_path / "tiny.model")), max_steps=3,
                      steps_per_atom=0, chunk_rows=2)  # 3 chunks
    for j in (1, 2):
        stage_spec("relax").run_file(tmp_path / "small.h5", tmp_path / f"j{j}.h5", cfg,
                                     Resources(workers=j))
    assert_same_files(tmp_path / "j1.h5", tmp_path / "j2.h5")


def _threads_kernel(cfg):
    """A chunk kernel that records the torch threads it ran on (module level: picklable)."""
    import torch

    def kernel(chunk: Table) -> Table:
        out = Table(dict(chunk.columns), None, {})
        out.columns["threads"] = np.full(len(chunk), torch.get_num_threads())
        return out
    return kernel


def test_chunks_run_on_one_torch_thread_in_this_process_as_in_workers(rows_file):
    """In-process chunks (one worker) run on one torch thread like a pinned worker's, so
    float results do not depend on the worker count; the caller's threads come back."""
    import torch

    table, _ = read_table(rows_file)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        chunks = plan_chunks(np.arange(len(table)), np.ones(len(table)), 2)
        for n in (1, 2):
            out = Workers(_threads_kernel, None, n).map(table, chunks)
            assert set(out["threads"].tolist()) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["refine", "topology", "relax"])
def test_workers_below_one_is_a_usage_error(command, rows_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, str(rows_file), "-o", str(tmp_path / "out.h5"), "-j", "0"])
    assert exit_.value.code == 2
    assert "-j/--workers: 0 is out of range" in capsys.readouterr().err  # checked at parse time
    assert not (tmp_path / "out.h5").exists()


def test_a_worker_that_fails_in_the_cli_gives_one_line_and_no_output(tmp_path, capsys):
    from hpcxtal.data import SACADA_PATH

    out = tmp_path / "out.h5"
    code = main(["relax", str(SACADA_PATH), "-o", str(out), "-j", "2", "--model",
                 str(tmp_path / "missing.model")])  # 144 rows: 5 chunks, 2 workers
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("hpcxtal relax: error: relax: a worker failed on a chunk of ")
    assert "missing.model" in err[0] and "nothing was written" in err[0]
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_chunk_rows_from_the_command_line(rows_file, tmp_path, caplog, capsys):
    """--chunk-rows sets the chunks of a file (24 rows, 8 per chunk: 3), is checked at
    parse time, and a campaign takes it from its config."""
    with caplog.at_level("INFO"):
        assert main(["refine", str(rows_file), "-o", str(tmp_path / "out.h5"), "--steps", "5",
                     "--chunk-rows", "8", "-j", "1"]) == 0
    assert "24 rows in 3 chunks over 1 worker" in caplog.text
    with pytest.raises(SystemExit) as exit_:
        main(["relax", str(rows_file), "-o", str(tmp_path / "r.h5"), "--chunk-rows", "0"])
    assert exit_.value.code == 2 and "--chunk-rows: 0 is out of range" in capsys.readouterr().err


def test_sigterm_stops_the_workers_at_once_and_writes_nothing(rows_file, tmp_path):
    """SIGTERM to a file-mode stage (``kill``, a batch system's time limit) ends its
    worker processes now instead of waiting for their chunks: exit 143, no output."""
    import signal
    import subprocess
    import sys
    import time

    from test_faults import env, session_processes

    out = tmp_path / "out.h5"
    proc = subprocess.Popen([sys.executable, "-m", "hpcxtal.cli", "refine", str(rows_file), "-o",
                             str(out), "-j", "2", "--chunk-rows", "8", "--steps", "100000"],
                            stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while sum("spawn_main" in cmd for _, _, cmd in session_processes(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no workers started"
            time.sleep(0.1)
        time.sleep(2)  # the workers are refining their first chunks
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
        workers = [p for p in session_processes(proc.pid) if "spawn_main" in p[2]]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 143, proc.stderr.read()
    assert "hpcxtal refine: terminated" in proc.stderr.read()
    assert not workers and not out.exists()


def _noting_kernel(cfg):
    """A chunk kernel that notes progress over its own rows, as relax_table does."""
    from hpcxtal.progress import note

    def kernel(table):
        for k in range(1, len(table) + 1):
            note(k, len(table))
        return table
    return kernel


def test_progress_of_chunks_counts_rows_of_the_whole_file(tmp_path, monkeypatch):
    """The kernel's own progress (k of its chunk) and the chunk loop's (rows done of the
    file) write one file: every note must count rows of the file, never of a chunk."""
    from hpcxtal import progress

    seen = []
    monkeypatch.setattr(progress, "_write", lambda force=False: seen.append(
        (progress._sink["state"]["done"], progress._sink["state"]["total"])))
    table = Table({"id": np.arange(10, dtype=np.uint64)})
    chunks = plan_chunks(np.arange(10), np.ones(10), 3)  # 4 + 3 + 3 rows
    with progress.recording(tmp_path / "p.json", "relax", 0):
        Workers(_noting_kernel, None, 1, "test").map(table, chunks)
    noted = seen[1:-1]  # between the file's first and last write
    assert {total for _, total in noted} == {10}
    done = [d for d, _ in noted]
    assert done == sorted(done) and done[-1] == 10 and len(set(done)) == 10


def _counting_kernel(cfg):
    """A chunk kernel that records the first id of every chunk it computes (``cfg``:
    the list) and fails on a chunk holding id 7 while the list holds "fail"."""
    def kernel(table):
        if "fail" in cfg and 7 in table["id"]:
            raise RuntimeError("interrupted")
        cfg.append(int(table["id"][0]))
        return Table({**table.columns, "twice": 2 * np.asarray(table["id"])}, None,
                     {"made_by": "kernel"})
    return kernel


def test_an_interrupted_map_resumes_at_its_first_unfinished_chunk(tmp_path):
    from hpcxtal.parallel import KeptChunks

    table = Table({"id": np.arange(12, dtype=np.uint64)})
    chunks = plan_chunks(np.arange(12), np.ones(12), 4)  # ids 0-2, 3-5, 6-8, 9-11
    stamp = {"inputs_sha256": "abc", "stage_config": "{}"}
    kept = KeptChunks(tmp_path / "out.h5", stamp)
    calls = ["fail"]
    with pytest.raises(RuntimeError):
        Workers(_counting_kernel, calls, 1).map(table, chunks, kept)
    assert calls == ["fail", 0, 3] and len(list(kept.folder.glob("*.h5"))) == 2
    calls = []
    out = Workers(_counting_kernel, calls, 1).map(table, chunks, kept)
    assert calls == [6, 9]  # the two finished chunks were not computed again
    fresh = Workers(_counting_kernel, [], 1).map(table, chunks)
    assert list(out.columns) == list(fresh.columns)
    for name in fresh.columns:
        np.testing.assert_array_equal(out[name], fresh[name], err_msg=name)
    assert out.attrs == fresh.attrs == {"made_by": "kernel"}
    calls = []  # another config (stamp): nothing kept is used
    Workers(_counting_kernel, calls, 1).map(
        table, chunks, KeptChunks(tmp_path / "out.h5", {**stamp, "stage_config": "{1}"}))
    assert calls == [0, 3, 6, 9]
    kept.clear()
    assert not kept.folder.exists()
    calls = []  # without a provenance stamp nothing is kept
    Workers(_counting_kernel, calls, 1).map(table, chunks, KeptChunks(tmp_path / "o.h5", {}))
    assert not (tmp_path / ".o.h5.chunks").exists()


def test_a_finished_refine_leaves_no_kept_chunks(rows_file, tmp_path):
    cfg = RefineConfig(max_steps=5, restarts=0, chunk_rows=8)
    stage_spec("refine").run_file(rows_file, tmp_path / "out.h5", cfg, Resources(workers=1))
    assert (tmp_path / "out.h5").exists() and not list(tmp_path.glob(".*"))


def test_main_gives_the_caller_its_sigterm_handler_back(tmp_path, capsys):
    """In-process callers of main() (tests, embedding code) keep their own handler."""
    import signal

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["info", str(tmp_path / "missing.h5")]) != 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
