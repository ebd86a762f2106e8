"""Submit campaign stages to SLURM or PBS as chained batch jobs.

Per-shard stages become job arrays over their unfinished shards only (a failed task
is resubmitted alone by submitting again); whole-campaign stages become single jobs;
each stage's job waits for the one before it (``afterok``). What was submitted is
recorded in ``DIR/jobs/submitted.json`` so ``hpcxtal status`` can ask the scheduler.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from hpcxtal.campaign import Campaign
from hpcxtal.hpc.jobs import render_job
from hpcxtal.hpc.site import SiteConfig
from hpcxtal.store.hdf5 import atomic_path, write_text_atomic


class SubmitError(RuntimeError):
    """The scheduler refused a job or is not reachable; the message has its answer."""


@dataclass
class Submission:
    """One submitted job (an array for a per-shard stage)."""

    stage: str
    job_id: str
    shards: list[int] | None  # None for a whole-campaign stage
    script: str
    submitted_at: str


def jobs_dir(campaign: Campaign) -> Path:
    return campaign.root / "jobs"


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise SubmitError(f"{cmd[0]} not found on PATH; submit from a node where the "
                          "scheduler's commands are (a login node)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SubmitError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def submit_command(site: SiteConfig, script: Path, after: str | None) -> list[str]:
    """The sbatch/qsub call for ``script``, waiting for job ``after`` if given."""
    if site.scheduler == "slurm":
        return ["sbatch", "--parsable", *([f"--dependency=afterok:{after}"] if after else []),
                str(script)]
    if site.scheduler == "pbs":
        return ["qsub", *(["-W", f"depend=afterok:{after}"] if after else []), str(script)]
    raise SubmitError(f"site {site.name!r} has no scheduler (scheduler: {site.scheduler}); "
                      "use 'hpcxtal run' there")


def submit_campaign(campaign: Campaign, site: SiteConfig, stages: list[str],
                    dry_run: bool = False) -> list[Submission]:
    """Submit ``stages`` (pipeline order) for everything not yet complete."""
    from hpcxtal.stages import PIPELINE

    folder = jobs_dir(campaign)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    root = campaign.root.resolve()
    after: str | None = None
    done: list[Submission] = []
    for spec in (s for s in PIPELINE if s.name in stages):
        if spec.per_shard:
            todo = [i for i in range(campaign.config.shard.n_shards) if not spec.done(campaign, i)]
            if not todo:
                continue
            shard_list = folder / f"{spec.name}-shards.txt"
            write_text_atomic(shard_list, "".join(f"{i}\n" for i in todo))
            text = render_job(site, site.stage_executor(spec.name), spec.name, root, len(todo), shard_list.resolve(),
                              (folder / "logs").resolve())
        else:
            if spec.done(campaign, None):
                continue
            todo = None
            text = render_job(site, site.stage_executor(spec.name), spec.name, root, None, None,
                              (folder / "logs").resolve())
        script = folder / f"{spec.name}.{'sbatch' if site.scheduler == 'slurm' else 'pbs'}"
        write_text_atomic(script, text)
        if dry_run:
            job_id = "(dry run)"
        else:
            out = _run(submit_command(site, script, after))
            job_id = out.split(";")[0].strip()
            after = job_id
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        done.append(Submission(spec.name, job_id, todo, str(script), stamp))
    if not dry_run and done:
        _record(campaign, done)
    return done


def _record(campaign: Campaign, new: list[Submission]) -> None:
    path = jobs_dir(campaign) / "submitted.json"
    old = json.loads(path.read_text()) if path.exists() else []
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(old + [asdict(s) for s in new], indent=2) + "\n")


def submitted(campaign: Campaign) -> list[dict]:
    """Every job submitted for the campaign, oldest first."""
    path = jobs_dir(campaign) / "submitted.json"
    return json.loads(path.read_text()) if path.exists() else []


def job_states(site: SiteConfig, job_ids: list[str]) -> dict[str, str]:
    """Scheduler state of each job (arrays: the states of their tasks, counted)."""
    states: dict[str, str] = {}
    for job in job_ids:
        if site.scheduler == "slurm":
            out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                                 text=True).stdout
            found = re.findall(r"JobState=(\S+)", out)
        else:
            out = subprocess.run(["qstat", "-x", "-f", job], capture_output=True, text=True).stdout
            found = re.findall(r"job_state = (\S+)", out)
        if not found:
            states[job] = "unknown (finished long ago or not visible)"
        else:
            counts = {s: found.count(s) for s in sorted(set(found))}
            states[job] = ", ".join(f"{n} {s}" if len(found) > 1 else s for s, n in counts.items())
    return states
