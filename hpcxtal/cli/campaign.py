"""Campaign commands: create one, run or resume it with Parsl, submit it to a batch
system, and say where it stands."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from hpcxtal import cli_args as num
from hpcxtal.cli.common import UsageError, command, open_campaign

log = logging.getLogger("hpcxtal")


def cmd_init(args: argparse.Namespace) -> int:
    """Create a campaign directory with a validated config.

    Create a campaign directory: campaign.yaml (edit it, or start from --config) and an
    empty manifest of stages.
    """
    from hpcxtal.campaign import Campaign, CampaignConfig
    from hpcxtal.generate.config import SampleConfig

    if args.config:
        cfg = CampaignConfig.from_file(args.config)
    else:
        cfg = CampaignConfig(name=args.name or args.dir.resolve().name)
    if args.name:
        cfg = dataclasses.replace(cfg, name=args.name)
    if args.inputs:
        cfg = dataclasses.replace(cfg, import_=dataclasses.replace(cfg.import_, inputs=args.inputs))
    if args.sample is not None:
        if args.inputs:
            raise UsageError("give --sample or --input, not both")
        try:
            cfg = dataclasses.replace(cfg, sample=SampleConfig(n=args.sample))
        except ValueError as err:
            raise UsageError(str(err)) from None
    if args.shards is not None:
        cfg = dataclasses.replace(cfg, shard=dataclasses.replace(cfg.shard, n_shards=args.shards))
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    campaign = Campaign.create(args.dir, cfg)
    log.info("created campaign %r in %s (id %s)", cfg.name, campaign.root, campaign.campaign_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Where a campaign stands.

    Print each stage of a campaign: status, counts, and whether its output files exist and
    verify.
    """
    from hpcxtal.hpc.site import apply_site
    from hpcxtal.hpc.submit import job_states, submitted
    from hpcxtal.layout import ledger_path, progress_path
    from hpcxtal.progress import describe
    from hpcxtal.stages import PIPELINE
    from hpcxtal.store.provenance import PROVENANCE

    campaign = open_campaign(args.dir, required=True)
    manifest = campaign.manifest()
    print(f"campaign {manifest['name']!r} ({manifest['campaign_id']}) in {campaign.root}")
    ledger = ledger_path(campaign.root)
    PROVENANCE.load_ledger(ledger)
    for spec in PIPELINE:
        entry = manifest["stages"].get(spec.name, {})
        if not spec.enabled(campaign.config):
            print(f"  {spec.name:10s} off")
            continue
        if spec.per_shard:
            n = campaign.config.shard.n_shards
            todo = [i for i in range(n) if not spec.done(campaign, i)]
            state = "partial" if 0 < len(todo) < n else ("done" if not todo else "pending")
            print(f"  {spec.name:10s} {state:8s} {n - len(todo)}/{n} shards complete")
            for i in todo:  # shards a process is (or was) working on
                line = describe(progress_path(campaign.root, spec.name, i))
                if line is not None:
                    print(f"    shard {i}: {line}")
            continue
        recorded = entry.get("status", "pending")
        state = "done" if spec.done(campaign) else ("pending" if recorded == "done" else recorded)
        counts = ", ".join(f"{k} {v}" for k, v in entry.get("counts", {}).items())
        print(f"  {spec.name:10s} {state:8s} {counts}")
    PROVENANCE.save_ledger(ledger, campaign.root)
    _report_temp_files(campaign.root)
    jobs = submitted(campaign)
    site = apply_site(campaign)
    if jobs and site.scheduler != "local":
        states = job_states(site, [j["job_id"] for j in jobs])
        print("batch jobs:")
        for job in jobs:
            shards = "" if job["shards"] is None else f" shards {job['shards']}"
            print(f"  {job['stage']:10s} job {job['job_id']:10s} {states[job['job_id']]}{shards}")
    return 0


def _report_temp_files(root: Path) -> None:
    """Print the temporary files of writers that never finished, and which of them
    'hpcxtal resume' removes (those of gone processes on this host)."""
    from hpcxtal.store.tempfiles import find_temp_files

    temps = find_temp_files(root)
    if temps:
        gone = sum(t.writer_gone for t in temps)
        print(f"leftover temporary files: {len(temps)} ({gone} of writers gone from this host: "
              f"'hpcxtal resume {root}' removes them; the rest may be live writers)")
        for temp in temps:
            print(f"  {temp.path} (pid {temp.pid} on {temp.host or 'an unrecorded host'}"
                  f"{', gone' if temp.writer_gone else ''})")


def _campaign_site_stages(args: argparse.Namespace):
    """The campaign, the site it runs on (``--site`` or its own) and the stages asked
    for (``--stage``, default all), checked against the pipeline."""
    from hpcxtal.hpc.site import apply_site, load_site
    from hpcxtal.stages import PIPELINE

    campaign = open_campaign(args.dir, required=True)
    names = [s.name for s in PIPELINE]
    unknown = [s for s in args.stages or [] if s not in names]
    if unknown:
        raise UsageError(f"unknown stage {unknown[0]!r}; stages are {names}")
    site = load_site(args.site, search=[campaign.root]) if args.site else apply_site(campaign)
    return campaign, site, args.stages or names


def cmd_run(args: argparse.Namespace) -> int:
    """Run a campaign's stages with Parsl on its site.

    Each stage runs as Parsl apps on the site's executors (gpu: refinement; cpu: the rest);
    stages whose output files exist and verify are skipped, so an interrupted campaign
    resumes from its HDF5 files.
    """
    from hpcxtal.cli.files import report_campaign
    from hpcxtal.hpc.driver import run_campaign
    from hpcxtal.store.tempfiles import remove_stale_temp_files

    campaign, site, names = _campaign_site_stages(args)
    for path in remove_stale_temp_files(campaign.root):
        log.warning("%s: temporary file of a writer that is gone; removed", path)
    log.info("campaign %s on site %r (%s): stages %s", campaign.root, site.name, site.scheduler,
             ", ".join(names))
    run_campaign(campaign, site, args.stages)
    status = cmd_status(args)
    if args.stages is None:  # the whole campaign ran: report on its database
        return report_campaign(campaign) or status
    return status


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit stages to SLURM/PBS as chained job arrays.

    Render batch scripts into DIR/jobs/ from the templates in hpcxtal/jobs/ and submit them:
    per-shard stages as job arrays over their unfinished shards (submit again to resubmit
    failed tasks alone), whole-campaign stages as single jobs, each waiting for the one
    before (afterok).
    """
    from hpcxtal.hpc.submit import submit_campaign

    campaign, site, names = _campaign_site_stages(args)
    subs = submit_campaign(campaign, site, names, dry_run=args.dry_run)
    if not subs:
        log.info("nothing to submit: every requested stage is complete")
    for sub in subs:
        what = "whole campaign" if sub.shards is None else f"shards {sub.shards}"
        log.info("%s: job %s (%s), script %s", sub.stage, sub.job_id, what, sub.script)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The campaign commands' parsers."""
    p = command(sub, "init", cmd_init)
    p.add_argument("dir", type=Path, help="campaign directory to create")
    p.add_argument("--config", type=Path, help="start from this campaign YAML instead of defaults")
    p.add_argument("--name", help="campaign name (default: the directory name)")
    p.add_argument("--input", dest="inputs", action="append", metavar="SRC",
                   help="input for the import stage (repeatable; default: the bundled "
                        "SACADA set, 'sacada')")
    p.add_argument("--sample", type=num.positive_int, metavar="N",
                   help="sample N candidates from the shipped generator instead of importing "
                        "(sets the config's 'sample' section)")
    p.add_argument("--shards", type=num.positive_int, help="number of shards for parallel stages")
    p.add_argument("--seed", type=num.seed, help="campaign random seed")

    for name, text in (("run", "Run a campaign's stages with Parsl on its site"),
                       ("resume", "Finish an interrupted campaign (same as run: done work is kept)")):
        p = command(sub, name, cmd_run, help=text)
        p.add_argument("dir", type=Path, help="campaign directory")
        p.add_argument("--site", help="site config name or path (default: the campaign's)")
        p.add_argument("--stage", dest="stages", action="append", metavar="STAGE",
                       help="run only this stage (repeatable)")

    p = command(sub, "submit", cmd_submit)
    p.add_argument("dir", type=Path, help="campaign directory")
    p.add_argument("--stage", dest="stages", action="append", metavar="STAGE",
                   help="stage to submit (repeatable; default: every stage)")
    p.add_argument("--site", help="site config name or path (default: the campaign's)")
    p.add_argument("--dry-run", action="store_true", help="write the scripts, submit nothing")

    p = command(sub, "status", cmd_status)
    p.add_argument("dir", type=Path)
