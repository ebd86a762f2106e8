"""The ``hpcxtal`` command: one subcommand per stage plus campaign, file and site tools.

Every stage runs on explicit files (``hpcxtal STAGE IN -o OUT``) or on a campaign
directory (``hpcxtal STAGE DIR``), where paths, settings and provenance come from the
stage registry (:mod:`hpcxtal.stages`). Commands live by family: :mod:`.campaign`
(init, run, resume, submit, status), :mod:`.stages` (one per stage), :mod:`.files`
(prepare, train, db, report, export, info), :mod:`.site` and :mod:`.bench`
(reference tasks); argument checks shared by
all of them are in :mod:`hpcxtal.cli_args`. Every failure prints one line and exits
with status 2 (1 for ``info`` on a file that does not verify); ``-v`` adds the
traceback of a bug.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback

from hpcxtal import __version__
from hpcxtal import cli_args as num
from hpcxtal.cli import bench, campaign, files, site, stages
from hpcxtal.cli.common import UsageError

log = logging.getLogger("hpcxtal")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every family adds its commands."""
    parser = argparse.ArgumentParser(
        prog="hpcxtal",
        description="Find crystal structures with a chosen local environment, at cluster "
                    "scale. Stages read and write HDF5 tables; see 'hpcxtal COMMAND --help'.",
    )
    parser.add_argument("--version", action="version", version=f"hpcxtal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in (campaign, stages, files, site, bench):
        family.add_parsers(sub)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s"
                        if args.verbose > 1 else "%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # the terminal shows what -v/-q asked for,
        handler.setLevel(level)  # whatever a campaign's log file records
    if args.verbose < 2:  # Parsl logs every task and block; its run_dir keeps them
        logging.getLogger("parsl").propagate = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit) raised as an interrupt, so that
    context managers (Parsl's executors and their interchange, temp files) clean up."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status. The one error boundary: every failure
    prints one line (what, which file, what to do) and exits 2; with -v a bug also
    prints its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    # SIGTERM raises Terminated while this command runs (signals reach the main thread
    # only); a caller's own handler comes back afterwards.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _run(parser, args)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command of ``args`` inside the error boundary (see :func:`main`)."""
    try:
        num.refuse_overwriting_inputs(args)
    except ValueError as err:
        parser.error(str(err))
    try:
        num.check_stage_inputs(args)
        return args.func(args)
    except UsageError as err:
        parser.error(str(err))
    except BrokenPipeError:  # output piped into head or less that closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"hpcxtal {args.command}: {'terminated' if terminated else 'interrupted'}; "
              "completed files are kept, partial ones were removed", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as err:  # noqa: BLE001 - the boundary: no traceback for users
        text, bug = num.describe_failure(err)
        if args.verbose:
            traceback.print_exc()
        print(f"hpcxtal {args.command}: " + (f"internal error: {text} (a bug in hpcxtal; "
              "'-v' shows the traceback to report)" if bug else f"error: {text}"), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
