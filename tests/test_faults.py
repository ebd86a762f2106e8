"""Fault tests: kill -9 the campaign driver at chosen points, resume, compare databases.

A tiny sampled campaign runs once uninterrupted (the reference). Then, per seed, one
campaign is killed (SIGKILL to every process of the driver's session, as a batch system
does to a crashed job) during sample, during the refinement rounds (round 2 finished,
the rounds stage not), during relax and during merge, resumed after each kill, and its
final database must equal the reference: same ids in the same order, same energies
(1e-9), same status columns. Seeds pick random extra delays after each point's marker;
``HPCXTAL_FAULT_SEEDS=0,1,2,...`` runs more (``benchmarks/fault_campaign.py`` kills
each point in a fresh campaign). Corrupted files are detected, named and recomputed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from hpcxtal.store.hdf5 import read_table

from test_relax import tiny_mace

REPO = Path(__file__).resolve().parents[1]
SEEDS = [int(s) for s in os.environ.get("HPCXTAL_FAULT_SEEDS", "0,1").split(",")]
N_SHARDS = 2


def campaign_text(model: Path) -> str:
    """12 sampled rows, 2 shards, 4 short refinement rounds (rounds 3 and 4 are the
    window of the mid-rounds kill), a tiny MACE model."""
    return (f"name: faults\nsite: local\nsample:\n  n: 12\nshard:\n  n_shards: {N_SHARDS}\n"
            f"refine:\n  max_steps: 30\n  restarts: 1\nrounds:\n  n_rounds: 4\n  latent:\n"
            f"    steps: 20\nrelax:\n  backend: mace\n  model: {model}\n  max_steps: 3\n"
            f"  steps_per_atom: 0\n")


def cli(*args: str) -> list[str]:
    """The ``hpcxtal`` command line, run with this tree's code."""
    return [sys.executable, "-m", "hpcxtal.cli", *args]


def env() -> dict[str, str]:
    """This environment with this tree first on PYTHONPATH and the interpreter's folder
    off PATH: the driver must work from a venv that is used by its path, not activated."""
    bin_dir = os.path.dirname(sys.executable)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    return {**os.environ, "PATH": os.pathsep.join(path), "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def init_campaign(folder: Path, model: Path) -> Path:
    """A new campaign directory ``folder/camp`` with the fault-test config."""
    cfg = folder / "faults.yaml"
    cfg.write_text(campaign_text(model))
    camp = folder / "camp"
    subprocess.run(cli("init", str(camp), "--config", str(cfg), "-q"), check=True, env=env())
    return camp


def run_to_end(camp: Path, command: str = "resume", timeout: float = 600) -> str:
    """Run ``hpcxtal COMMAND camp`` to completion in its own session; its log text."""
    log = camp.parent / f"{command}-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cli(command, str(camp)), stdout=out, stderr=subprocess.STDOUT,
                                env=env(), start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            kill_session(proc)
    text = log.read_text()
    assert code == 0, f"hpcxtal {command} failed ({code}):\n{text[-3000:]}"
    return text


# --- processes ---------------------------------------------------------------------

def session_processes(sid: int) -> list[tuple[int, int, str]]:
    """(pid, process group, command line) of the live processes of session ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _, pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state not in "ZX":
            found.append((int(entry.name), int(pgrp), cmd.strip()))
    return found


def kill_session(proc: subprocess.Popen, timeout: float = 20) -> dict[str, int]:
    """SIGKILL every process group of ``proc``'s session (the driver's group with the
    Parsl interchange, and the worker pools Parsl's LocalProvider puts in groups of
    their own) until none is left; fails if some process outlives ``timeout`` s.
    Returns how many processes were killed in the driver's group and in others."""
    sid, killed = proc.pid, {"driver_group": 0, "other_groups": 0}
    deadline = time.monotonic() + timeout
    while True:
        alive = session_processes(sid)
        if proc.poll() is None:  # the driver itself (not yet reaped)
            alive.append((proc.pid, proc.pid, "driver"))
        if not alive:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"processes of session {sid} survived SIGKILL: {alive}")
        for group in sorted({g for _, g, _ in alive}, key=lambda g: g != sid):
            counted = sum(1 for _, g, _ in alive if g == group)
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed["driver_group" if group == sid else "other_groups"] += counted
        proc.poll()
        time.sleep(0.05)
    proc.wait()
    return killed


# --- kill points -------------------------------------------------------------------

def _manifest_status(camp: Path, stage: str) -> str | None:
    try:
        return json.loads((camp / "manifest.json").read_text())["stages"][stage].get("status")
    except (OSError, ValueError, KeyError):
        return None


def _exist(camp: Path, pattern: str) -> int:
    return sum(1 for p in camp.glob(pattern) if p.name.endswith(".h5"))


@dataclass(frozen=True)
class KillPoint:
    """Where to kill: ``ready`` marks the point (polled), ``max_delay_s`` bounds the
    seeded extra delay, ``reached`` says (after the kill) that the stage had not
    finished, ``state`` describes what was on disk then."""

    name: str
    ready: Callable[[Path], bool]
    max_delay_s: float
    reached: Callable[[Path], bool]
    state: Callable[[Path], str]


KILL_POINTS = (
    KillPoint("sample", lambda c: _manifest_status(c, "sample") == "running", 1.0,
              lambda c: not (c / "pool.h5").exists(),
              lambda c: f"pool.h5 {'present' if (c / 'pool.h5').exists() else 'absent'}"),
    KillPoint("refine mid-rounds", lambda c: _exist(c, "rounds/round-2/part-*") > 0, 0.3,
              lambda c: _exist(c, "rounds/rounds-*") < N_SHARDS,
              lambda c: f"round-3 parts {_exist(c, 'rounds/round-3/part-*')}, "
                        f"round-4 parts {_exist(c, 'rounds/round-4/part-*')}, "
                        f"rounds outputs {_exist(c, 'rounds/rounds-*')}/{N_SHARDS}"),
    KillPoint("relax", lambda c: _exist(c, "topology/topology-*") == N_SHARDS, 1.5,
              lambda c: _exist(c, "relax/relax-*") < N_SHARDS,
              lambda c: f"relax outputs {_exist(c, 'relax/relax-*')}/{N_SHARDS}"),
    KillPoint("merge", lambda c: _manifest_status(c, "merge") == "running", 0.3,
              lambda c: not (c / "database.h5").exists(),
              lambda c: f"database.h5 {'present' if (c / 'database.h5').exists() else 'absent'}"),
)


def kill_at(camp: Path, command: str, point: KillPoint, rng: random.Random,
            timeout: float = 600) -> dict[str, object]:
    """Start ``hpcxtal COMMAND camp`` in its own session, wait for ``point``, sleep a
    seeded delay, kill the session; fails unless the point was reached. What happened."""
    log = camp.parent / f"{command}-{point.name.replace(' ', '-')}-{time.monotonic_ns()}.log"
    delay = rng.uniform(0, point.max_delay_s)
    with open(log, "w") as out:
        proc = subprocess.Popen(cli(command, str(camp)), stdout=out, stderr=subprocess.STDOUT,
                                env=env(), start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not point.ready(camp):
                if proc.poll() is not None:
                    pytest.fail(f"{command} ended ({proc.returncode}) before the kill point "
                                f"{point.name!r}:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"kill point {point.name!r} not reached in {timeout} s")
                time.sleep(0.02)
            time.sleep(delay)
        finally:
            killed = kill_session(proc)
    assert point.reached(camp), (f"killed too late: the stage of {point.name!r} had finished "
                                 f"({point.state(camp)}); lower its max_delay_s")
    return {"point": point.name, "delay_s": round(delay, 3), "state": point.state(camp), **killed}


# --- databases ---------------------------------------------------------------------

def assert_same_database(got: Path, want: Path) -> None:
    """Same rows in the same order, every column equal (floats to 1e-9), same
    structures and quarantine."""
    (a, qa), (b, qb) = read_table(got), read_table(want)
    np.testing.assert_array_equal(a["id"], b["id"])
    assert sorted(a.columns) == sorted(b.columns)
    for name in b.columns:
        x, y = a[name], b[name]
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-9, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.structures is None) == (b.structures is None)
    if b.structures is not None:
        for f in ("natoms", "numbers"):
            np.testing.assert_array_equal(getattr(a.structures, f), getattr(b.structures, f))
        for f in ("lattice", "frac"):
            np.testing.assert_allclose(getattr(a.structures, f), getattr(b.structures, f),
                                       rtol=0, atol=1e-9, err_msg=f)
    assert (qa is None) == (qb is None)
    if qb is not None:
        np.testing.assert_array_equal(qa["id"], qb["id"])


# --- tests ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_mace(tmp_path_factory.mktemp("faults-model") / "tiny.model")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model) -> Path:
    """The uninterrupted campaign."""
    camp = init_campaign(tmp_path_factory.mktemp("reference"), model)
    run_to_end(camp, "run")
    table, _ = read_table(camp / "database.h5")
    assert np.isfinite(table["energy"]).sum() >= 1, "nothing was relaxed: nothing to compare"
    return camp


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_during_each_stage_then_resume_gives_the_uninterrupted_database(
        seed, reference, model, tmp_path):
    camp = init_campaign(tmp_path, model)
    rng = random.Random(seed)
    events = []
    for k, point in enumerate(KILL_POINTS):
        events.append(kill_at(camp, "run" if k == 0 else "resume", point, rng))
    run_to_end(camp)
    print(json.dumps(events))
    assert_same_database(camp / "database.h5", reference / "database.h5")


def test_sigterm_to_the_driver_alone_stops_every_process_and_resume_completes(
        reference, model, tmp_path):
    """``kill PID`` (SIGTERM to the driver only, as a user or a batch system's time
    limit sends it): the driver shuts Parsl down, so no interchange or worker pool of
    its session outlives it, exits 143, and a resume gives the uninterrupted database."""
    camp = init_campaign(tmp_path, model)
    point = KILL_POINTS[1]  # mid-rounds: Parsl's executors are up and busy
    log = tmp_path / "run-sigterm.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cli("run", str(camp)), stdout=out, stderr=subprocess.STDOUT,
                                env=env(), start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while not point.ready(camp) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, f"run ended before the rounds:\n{log.read_text()[-3000:]}"
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=120)
            gone = time.monotonic() + 60
            while session_processes(proc.pid) and time.monotonic() < gone:
                time.sleep(0.2)
            left = session_processes(proc.pid)
        finally:
            kill_session(proc)
    assert code == 143, f"exit {code}:\n{log.read_text()[-3000:]}"
    assert "terminated; completed files are kept" in log.read_text()
    assert not left, f"processes outlived the driver's SIGTERM: {left}"
    run_to_end(camp)
    assert_same_database(camp / "database.h5", reference / "database.h5")


def _corrupt(path: Path) -> None:
    """Overwrite 16 bytes of the stored ``cell`` data of ``path`` (same file size)."""
    import h5py

    with h5py.File(path, "r") as f:
        offset = f["cell"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xa5" * 16)


def _modify(path: Path) -> None:
    """Change one stored value through HDF5 (the file stays readable; its SHA-256 not)."""
    import h5py

    with h5py.File(path, "r+") as f:
        f["loss"][0] = f["loss"][0] + 1.0


def test_corrupted_files_are_named_recomputed_and_give_the_same_database(reference, tmp_path):
    camp = tmp_path / "camp"
    shutil.copytree(reference, camp, ignore=shutil.ignore_patterns("runinfo"))
    bad = {"shards/shard-0001.h5": _corrupt, "refine/refine-0000.h5": _corrupt,
           "rounds/rounds-0001.h5": _modify,
           "relax/relax-0001.h5": lambda p: p.write_bytes(p.read_bytes()[:4096]),
           "database.h5": lambda p: p.write_bytes(p.read_bytes()[:-100])}
    for name, damage in bad.items():
        damage(camp / name)
    text = run_to_end(camp)
    for name in bad:
        assert any(name in line and "recomput" in line for line in text.splitlines()), (
            f"no log line names {name} as recomputed:\n{text}")
    assert_same_database(camp / "database.h5", reference / "database.h5")


# --- units: what counts as current ---------------------------------------------------

@pytest.fixture
def refined(generated_csv, tmp_path):
    """A campaign of 10 imported rows, refined briefly over 3 rounds (in process)."""
    import yaml

    from hpcxtal.cli import main

    csv = tmp_path / "gen10.csv"
    csv.write_text("\n".join(generated_csv.read_text().splitlines()[:11]) + "\n")
    camp = tmp_path / "camp"
    assert main(["init", str(camp), "--input", str(csv), "--shards", "2", "-q"]) == 0
    data = yaml.safe_load((camp / "campaign.yaml").read_text())
    data["refine"].update(max_steps=20, restarts=1)
    data["rounds"].update(n_rounds=3, latent={**data["rounds"]["latent"], "steps": 5})
    (camp / "campaign.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for stage in ("import", "shard", "refine"):
        assert main([stage, str(camp), "-q"]) == 0
    return camp


def test_rounds_redo_parts_made_with_another_config_or_from_other_round1_files(refined, caplog):
    import yaml

    from hpcxtal.cli import main
    from hpcxtal.layout import part_path, stage_output
    from hpcxtal.store.hdf5 import file_summary, write_table

    def stamps():
        return [part_path(refined, r, 0, 1).stat().st_mtime_ns for r in (2, 3)]

    before = stamps()
    stage_output("rounds", refined, 0).unlink()
    assert main(["rounds", str(refined), "-q"]) == 0
    assert stamps() == before  # an unchanged campaign keeps its finished rounds
    # Another rounds config: the parts of every later round are stale.
    data = yaml.safe_load((refined / "campaign.yaml").read_text())
    data["rounds"]["latent"]["steps"] = 6
    (refined / "campaign.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with caplog.at_level("WARNING"):
        assert main(["rounds", str(refined), "-q"]) == 0
    after = stamps()
    assert after[0] != before[0] and after[1] != before[1]
    assert (f"{part_path(refined, 2, 0, 1)}: made with another stage config; recomputing round 2"
            in caplog.text)
    want = file_summary(stage_output("rounds", refined, 1))["attrs"]["stage_config"]
    assert file_summary(part_path(refined, 3, 0, 1))["attrs"]["stage_config"] == want
    # A round-1 file made again with other rows: the later rounds start again too.
    table, quarantine = read_table(stage_output("refine", refined, 1))
    table.columns["loss"] = table["loss"] + 1.0
    write_table(stage_output("refine", refined, 1), table, kind="refine", quarantine=quarantine)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["rounds", str(refined), "-q"]) == 0
    assert stamps()[0] != after[0]
    assert f"{stage_output('rounds', refined, 1)}: made from another version of" in caplog.text


def test_stale_reason_names_the_file_and_the_cause(refined):
    from hpcxtal.campaign import Campaign
    from hpcxtal.layout import shard_path, stage_output
    from hpcxtal.store.provenance import Provenance

    stale_reason = lambda dest, src, cfg: Provenance().stale_reason(dest, [src], cfg)  # noqa: E731

    cfg = Campaign(refined).config.refine
    dest, src = stage_output("refine", refined, 0), shard_path(refined / "shards", 0)
    assert stale_reason(dest, src, cfg) is None
    other = dataclasses.replace(cfg, max_steps=cfg.max_steps + 1)
    assert stale_reason(dest, src, other) == f"{dest}: made with another stage config"
    dest.write_bytes(dest.read_bytes()[:2000])
    assert stale_reason(dest, src, cfg).startswith(f"{dest}: unreadable or corrupted HDF5")


def test_a_round_redone_in_a_fresh_process_equals_the_uninterrupted_one(refined):
    from hpcxtal.layout import part_path, stage_output

    want, _ = read_table(part_path(refined, 3, 0, 1))
    assert len(want), "round 3 had no rows to refine"
    part_path(refined, 3, 0, 1).unlink()
    for i in range(N_SHARDS):
        stage_output("rounds", refined, i).unlink()
    subprocess.run(cli("rounds", str(refined), "-q"), check=True, env=env())
    got, _ = read_table(part_path(refined, 3, 0, 1))
    for name in ("id", "cell", "xyz", "loss", "valid", "round"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
