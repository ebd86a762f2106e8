"""The Parsl campaign driver: every stage of the pipeline as a Parsl app on files.

Whole-campaign stages run once; per-shard stages fan out one app per shard, and shard
``i`` of a later stage waits only for shard ``i`` of the stage before it. Each app runs
on the executor the site places its stage on (``SiteConfig.stage_executor``); the
rounds stage runs as an MPI application on the ``mpi`` executor, its ranks spread over
a block of its nodes (GPU nodes by default; ``parsl_config.mpi_ranks``). Apps take a
campaign path and return counts; everything else passes through the campaign's HDF5
files, so an interrupted run resumes by running again (complete outputs are skipped).
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from typing import Any

from hpcxtal.campaign import Campaign
from hpcxtal.hpc.site import SiteConfig, apply_site

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage app raised; the message names the stage, the shard and the cause."""


class _Warnings(logging.Handler):
    """Collects the warnings hpcxtal logs while a stage runs in a worker, whose own log
    the user does not see, so that the driver can log them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_stage(campaign_dir: str, stage: str, shard: int | None, force: bool = False,
              inputs: tuple = ()) -> dict[str, Any]:
    """Run one stage (one shard of it) in whatever process Parsl gives it; ``inputs``
    are the futures it waits for (Parsl resolves them before calling). The result
    carries the counts and the warnings the stage logged (e.g. a corrupted file redone)."""
    from hpcxtal.stages import stage_spec

    warnings, logger = _Warnings(), logging.getLogger("hpcxtal")
    logger.addHandler(warnings)
    try:
        campaign = Campaign(campaign_dir)
        site = apply_site(campaign)
        campaign.attach_log()
        report = stage_spec(stage).run(campaign, shard, force, site.place(stage))
    finally:
        logger.removeHandler(warnings)
    return {"stage": stage, "shard": shard, "skipped": report.skipped,
            "warnings": warnings.lines, **report.counts}


def run_mpi_stage(campaign_dir: str, stage: str, force: bool = False, inputs: tuple = (),
                  parsl_resource_specification: dict | None = None) -> dict[str, Any]:
    """Run an MPI stage on the ranks Parsl's MPI mode gives this task: ``hpcxtal STAGE``
    started by ``$PARSL_MPI_PREFIX`` (the site's launcher over the block's nodes). A
    complete stage is reported as such without starting any rank."""
    from hpcxtal.stages import stage_spec

    campaign = Campaign(campaign_dir)
    apply_site(campaign)
    if not force and stage_spec(stage).done(campaign, None):
        return {"stage": stage, "shard": None, "skipped": True, "warnings": []}
    prefix = shlex.split(os.environ["PARSL_MPI_PREFIX"])
    cmd = [*prefix, sys.executable, "-m", "hpcxtal.cli", stage, campaign_dir, "-q",
           *(["--force"] if force else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise StageFailed(f"{stage} on {os.environ.get('PARSL_NUM_RANKS', '?')} MPI ranks "
                          f"({' '.join(prefix)}) failed ({proc.returncode}): {last}")
    return {"stage": stage, "shard": None, "skipped": False,
            "warnings": [l for l in proc.stderr.splitlines() if l.strip()],
            "ranks": int(os.environ.get("PARSL_NUM_RANKS", "1"))}


def run_campaign(campaign: Campaign, site: SiteConfig | None = None,
                 stages: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the pipeline (or the named ``stages``) on the campaign's site with Parsl."""
    import parsl
    from parsl.app.python import PythonApp

    from hpcxtal.hpc.parsl_config import make_parsl_config, mpi_ranks
    from hpcxtal.stages import PIPELINE

    site = site or apply_site(campaign)
    specs = [s for s in PIPELINE if stages is None or s.name in stages]
    mpi = next((site.stage_executor(s.name) for s in specs if s.mpi), None)  # its nodes
    config = make_parsl_config(site, campaign.root / "runinfo", mpi=mpi)
    root = str(campaign.root.resolve())
    results: list[dict[str, Any]] = []
    with parsl.load(config):
        apps = {kind: PythonApp(run_stage, executors=[kind]) for kind in ("gpu", "cpu")}
        mpi_app = PythonApp(run_mpi_stage, executors=["mpi"]) if mpi else None
        submitted = []
        previous: list = []  # futures of the stage before
        for spec in specs:
            app = apps[site.stage_executor(spec.name)]
            if spec.mpi:
                futures = [mpi_app(root, spec.name, inputs=previous,
                                   parsl_resource_specification=mpi_ranks(site, mpi))]
            elif not spec.per_shard:
                futures = [app(root, spec.name, None, inputs=previous)]
            else:
                n = campaign.config.shard.n_shards
                deps = [[f] for f in previous] if len(previous) == n else [previous] * n
                futures = [app(root, spec.name, i, inputs=d) for i, d in enumerate(deps)]
            submitted += futures
            previous = futures
        for future in submitted:
            try:
                result = future.result()
            except Exception as err:
                raise StageFailed(f"{err.__class__.__name__}: {err}; Parsl logs are in "
                                  f"{campaign.root / 'runinfo'}") from err
            results.append(result)
            shard = result["shard"]
            where = result["stage"] + ("" if shard is None else f" shard {shard}")
            for line in result["warnings"]:
                log.warning("%s: %s", where, line)
            done = ", ".join(f"{k} {v}" for k, v in result.items()
                             if k not in ("stage", "shard", "skipped", "warnings"))
            log.info("%s: %s", where, "complete already" if result["skipped"] else done)
    _record_shards(campaign, specs)
    return results


def _record_shards(campaign: Campaign, specs: list) -> None:
    """Record each per-shard stage that ran as done or partial (with how many shards are
    complete) in the manifest; only this driver writes it, the apps never do."""
    n = campaign.config.shard.n_shards
    for spec in specs:
        if spec.per_shard and not spec.enabled(campaign.config):
            campaign.record(spec.name, status="off")
        elif spec.per_shard:
            good = sum(spec.done(campaign, i) for i in range(n))
            campaign.record(spec.name, status="done" if good == n else "partial",
                            shards_complete=good, shards=n)
