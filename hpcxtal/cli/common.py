"""Pieces every command family shares: usage errors, common options, opening a
campaign (with its site's file policy), and the campaign-or-file dispatch of stages."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("hpcxtal")


class UsageError(Exception):
    """Wrong combination of command-line arguments."""


def command(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
            force: str | None = None, help: str | None = None,
            description: str | None = None) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, which runs ``func``: its help is the first line
    of ``func``'s docstring and its description the rest (unless given), -v/-q as on
    every command, and ``--force`` (what it redoes: ``force``) on a command that keeps
    finished work."""
    first, _, rest = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
    p = sub.add_parser(name, help=help or first.rstrip("."),
                       description=description or " ".join(rest.split()))
    p.set_defaults(func=func)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    if force is not None:
        p.add_argument("--force", action="store_true", help=force)
    return p


def add_workers(p: argparse.ArgumentParser, what: str) -> None:
    """-j/--workers N on a stage command; ``what`` says what the processes do."""
    from hpcxtal import cli_args as num

    p.add_argument("-j", "--workers", type=num.positive_int, metavar="N",
                   help=f"{what} (default: one per usable core; one on a GPU device)")


def group(sub: argparse._SubParsersAction, name: str, help: str, description: str,
          dest: str) -> argparse._SubParsersAction:
    """A command of several actions (``hpcxtal site check``, ``hpcxtal benchmark TASK``):
    its parser, and the subparsers its actions are added to with :func:`command`."""
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(dest=dest, required=True, metavar=dest.split("_")[-1].upper())


def open_campaign(path: Path, required: bool = False):
    """The campaign at ``path`` with its site's HDF5 file policy applied to this
    process, or None where ``path`` is not a campaign directory (an error if
    ``required``)."""
    from hpcxtal.campaign import Campaign, find_campaign
    from hpcxtal.hpc.site import apply_site

    campaign = Campaign(path) if required else find_campaign(path)
    if campaign is not None:
        apply_site(campaign)
        campaign.attach_log()
    return campaign


def file_mode_config(args: argparse.Namespace, default: Any, overrides: dict) -> Any:
    """The config of a stage run on explicit files: ``-o`` is required, ``--shard`` is
    not allowed, and the command-line ``overrides`` (None = not given) are applied to
    ``default`` with their validation errors as usage errors."""
    if args.output is None:
        raise UsageError("give -o OUT.h5 (or a campaign directory)")
    if getattr(args, "shard", None) is not None:
        raise UsageError("--shard needs a campaign directory")
    try:
        return dataclasses.replace(default, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as err:
        raise UsageError(str(err)) from None


def stage_command(args: argparse.Namespace, name: str, source: Path,
                  file_mode: Callable[[], Any], campaign_only: dict[str, object] | None = None,
                  resources: Any = None):
    """Run stage ``name`` on a campaign directory ``source`` (when there is no ``-o``)
    or on explicit files (``file_mode()``); options in ``campaign_only`` that were given
    (not None/False) are refused for a campaign, whose settings come from its config.
    Returns the :class:`hpcxtal.stages.StageReport`, or None when a campaign's stage
    (shard) was complete already."""
    from hpcxtal.stages import StageReport, stage_spec

    campaign = open_campaign(source) if getattr(args, "output", None) is None else None
    if campaign is None:
        report = file_mode()
        return report if isinstance(report, StageReport) else StageReport([args.output], report)
    spec = stage_spec(name)
    if spec.per_shard and not spec.enabled(campaign.config):
        raise UsageError(f"{name} is off in this campaign: add a '{name}:' section to "
                         f"{campaign.root / 'campaign.yaml'} ('{name}: {{}}' for the defaults)")
    given = [opt for opt, value in (campaign_only or {}).items() if value not in (None, False)]
    if given:
        raise UsageError(f"{given[0]}: a campaign takes this from its config; edit the "
                         f"{name} section of {campaign.root / 'campaign.yaml'}")
    from hpcxtal.hpc.site import apply_site

    report = spec.run(campaign, getattr(args, "shard", None), getattr(args, "force", False),
                      apply_site(campaign).place(name, resources))
    if report.skipped:
        log.info("%s: %d output(s) complete and current; nothing to do (--force to redo)",
                 name, len(report.outputs))
        return None
    return report


def per_shard_stage(args: argparse.Namespace, name: str, section: Any,
                    options: dict[str, tuple[str, Any]]):
    """Run per-shard stage ``name`` from its command line: on explicit files, the config
    section ``section`` (its defaults) with the given ``options`` (field -> (flag, value);
    value None = not given) applied; on a campaign, its config, refusing those options.
    Workers come from ``-j``. Returns what :func:`stage_command` returns."""
    from hpcxtal.stages import Resources, stage_spec

    resources = Resources(workers=args.workers)

    def file_mode():
        cfg = file_mode_config(args, section, {f: value for f, (_, value) in options.items()})
        return stage_spec(name).run_file(args.source, args.output, cfg, resources)

    return stage_command(args, name, args.source, file_mode,
                         {flag: value for flag, value in options.values()}, resources)
