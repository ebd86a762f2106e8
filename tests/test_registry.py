"""The stage registry: fingerprints hold science settings only, so resources (device,
workers, batch budgets, an MPI rank's GPU) never make finished outputs stale, while a
changed science setting makes exactly the affected stages stale."""
from __future__ import annotations

import yaml

import pytest

from hpcxtal.campaign import Campaign
from hpcxtal.cli import main
from hpcxtal.stages import PIPELINE, Resources, stage_spec

from test_driver import small_campaign_text  # noqa: F401  (fixture)

SCREENED = ("import", "shard", "refine", "rounds", "topology", "dedup", "relax")


@pytest.fixture(scope="module")
def finished(small_campaign_text, tmp_path_factory):
    """A small campaign run through relax in this process (refine on the CPU)."""
    folder = tmp_path_factory.mktemp("registry")
    cfg = folder / "c.yaml"
    cfg.write_text(small_campaign_text.replace("refine:\n", "refine:\n  device: cpu\n"))
    camp = folder / "camp"
    assert main(["init", str(camp), "--config", str(cfg), "-q"]) == 0
    campaign = Campaign(camp)
    for name in SCREENED:
        stage_spec(name).run(campaign)
    return camp


def _edit(camp, **sections) -> Campaign:
    """Rewrite campaign.yaml with ``sections`` merged into it; the campaign reopened."""
    path = camp / "campaign.yaml"
    data = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Campaign(camp)


def _mtimes(camp):
    return {p: p.stat().st_mtime_ns for p in camp.rglob("*.h5")}


def _stale(campaign) -> set[str]:
    return {s.name for s in PIPELINE if s.name in SCREENED and not s.done(campaign)}


def test_resources_never_make_outputs_stale(finished):
    original = (finished / "campaign.yaml").read_text()
    try:
        before = _mtimes(finished)
        campaign = _edit(finished, refine={"device": "cuda:3", "threads": 2,
                                           "max_batch_atoms": 1234, "workers": 2,
                                           "chunk_rows": 5},
                         topology={"workers": 2},
                         relax={"device": "cuda:1", "batch_atom_budget": 77,
                                "batch_edge_budget": 999, "workers": 2, "chunk_rows": 5})
        assert _stale(campaign) == set()
        for name in SCREENED:
            assert stage_spec(name).run(campaign, resources=Resources(workers=2)).skipped, name
        assert _mtimes(finished) == before  # nothing redone
    finally:
        (finished / "campaign.yaml").write_text(original)


@pytest.mark.parametrize("section, change, stale", [
    ("refine", {"max_steps": 61}, {"refine", "rounds"}),
    ("refine", {"target": "diamond"}, {"refine", "rounds"}),
    ("refine", {"objective": [{"name": "so3", "weight": 2.0}]}, {"refine", "rounds"}),
    ("rounds", {"later": "perturb"}, {"rounds"}),
    ("topology", {"depth": 11}, {"topology", "dedup"}),
    ("relax", {"fmax_eV_per_A": 0.04}, {"relax"}),
])
def test_a_science_setting_makes_exactly_its_stages_stale(finished, section, change, stale):
    original = (finished / "campaign.yaml").read_text()
    try:
        campaign = _edit(finished, **{section: change})
        assert _stale(campaign) == stale
        reasons = [why for name in stale for _, why in stage_spec(name).stale(campaign, None)]
        assert reasons and all("made with another stage config" in why for why in reasons)
    finally:
        (finished / "campaign.yaml").write_text(original)


class _FakeComm:
    """Two MPI ranks as the refine command sees them (no collective is reached when
    every output is current)."""

    def __init__(self, rank: int):
        self.rank = rank

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        return 2

    def Barrier(self) -> None:  # noqa: N802
        pass


def test_mpi_ranks_with_their_own_gpus_redo_nothing(finished, monkeypatch):
    """Each rank binds its node-local GPU (refine.device auto), as ``hpcxtal refine DIR``
    under mpiexec does; that device must not make round 1 or the rounds stale."""
    import hpcxtal.hpc.mpi as mpi

    original = (finished / "campaign.yaml").read_text()
    try:
        _edit(finished, refine={"device": "auto"})
        before = _mtimes(finished)
        bound = []
        for rank in (0, 1):
            comm = _FakeComm(rank)
            monkeypatch.setattr(mpi, "world", lambda comm=comm: comm)
            monkeypatch.setattr(mpi, "rank_device",
                                lambda comm: bound.append(f"cuda:{comm.Get_rank()}") or bound[-1])
            assert main(["refine", str(finished), "-q"]) == 0
        assert bound == ["cuda:0", "cuda:1"]
        assert _mtimes(finished) == before
    finally:
        (finished / "campaign.yaml").write_text(original)


def test_progress_files_log_and_status(finished, capsys):
    """Each shard a stage runs leaves a progress file (rows done, host); a campaign
    command appends what it ran to DIR/hpcxtal.log; status shows the progress of a shard
    that is not complete."""
    import json
    import socket

    from hpcxtal.layout import log_path, progress_path

    state = json.loads(progress_path(finished, "relax", 1).read_text())
    assert state["status"] == "done" and state["host"] == socket.gethostname()
    assert state["stage"] == "relax" and state["shard"] == 1 and state["done"] >= 1

    assert main(["topology", str(finished), "--shard", "0", "--force", "-q"]) == 0
    lines = log_path(finished).read_text().splitlines()
    assert any("topology shard 0:" in line and socket.gethostname() in line for line in lines)

    # A shard whose output is gone while a (simulated) worker reports progress on it.
    out = finished / "relax" / "relax-0000.h5"
    kept = out.read_bytes()
    try:
        out.unlink()
        path = progress_path(finished, "relax", 0)
        state = json.loads(path.read_text())
        state.update(status="running", done=3, total=10)
        path.write_text(json.dumps(state))
        capsys.readouterr()
        assert main(["status", str(finished)]) == 0
        shown = capsys.readouterr().out
        assert "relax      partial  1/2 shards complete" in shown
        assert "shard 0: running: 3/10 rows" in shown and "ETA" in shown
    finally:
        out.write_bytes(kept)


def test_status_trusts_what_stage_runs_wrote_and_rereads_what_changed(finished, monkeypatch):
    """A stage run leaves what it wrote beside the ledger; the next status (a fresh
    process: a fresh Provenance) folds it in and does not read those files, yet reads
    every other file, and a file changed since is read again."""
    import shutil

    from hpcxtal.layout import ledger_path
    from hpcxtal.store import provenance

    ledger = ledger_path(finished)
    shutil.rmtree(ledger.parent)
    assert main(["topology", str(finished), "--shard", "0", "--force", "-q"]) == 0
    written = ledger.with_name("written")
    assert len(list(written.glob("*.json"))) == 1
    reads = []
    real = provenance.checked_attrs
    monkeypatch.setattr(provenance, "checked_attrs", lambda p: reads.append(p) or real(p))
    fresh = provenance.Provenance()
    fresh.load_ledger(ledger)
    ran, other = finished / "topology" / "topology-0000.h5", finished / "relax" / "relax-0000.h5"
    assert fresh.problem(ran) is None and fresh.problem(other) is None
    assert reads == [other]

    fresh.save_ledger(ledger, finished)
    assert not any(written.glob("*.json"))  # folded into the ledger
    again = provenance.Provenance()
    again.load_ledger(ledger)
    kept = ran.read_bytes()
    try:
        ran.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))  # same size, new mtime
        assert again.problem(ran) is not None and reads[-1] == ran
        assert again.problem(other) is None and reads[-1] == ran
    finally:
        ran.write_bytes(kept)
