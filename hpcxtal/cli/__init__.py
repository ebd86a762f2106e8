"""The ``hpcxtal`` command: one subcommand per stage plus campaign, file and site tools.

Every stage runs on explicit files (``hpcxtal STAGE IN -o OUT``) or on a campaign
directory (``hpcxtal STAGE DIR``), where paths, settings and provenance come from the
stage registry (:mod:`hpcxtal.stages`). Commands live by family: :mod:`.campaign`
(init, run, resume, submit, status), :mod:`.stages` (one per stage), :mod:`.files`
(prepare, train, db, report, export, info) and :mod:`.site`. Errors in input, config
or files print one line and exit with status 2 (1 for ``info`` on a file that does not
verify).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from hpcxtal import __version__
from hpcxtal.cli import campaign, files, site, stages
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
    for family in (campaign, stages, files, site):
        family.add_parsers(sub)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s"
                        if args.verbose > 1 else "%(message)s", stream=sys.stderr)
    if args.verbose < 2:  # Parsl logs every task and block; its run_dir keeps them
        logging.getLogger("parsl").propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    from hpcxtal.config import ConfigError
    from hpcxtal.crystal.row import DecodeError
    from hpcxtal.hpc.driver import StageFailed
    from hpcxtal.hpc.submit import SubmitError
    from hpcxtal.parallel import WorkerError
    from hpcxtal.relax.errors import ModelSetupError
    from hpcxtal.store.formats import FormatError
    from hpcxtal.store.hdf5 import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return args.func(args)
    except UsageError as err:
        parser.error(str(err))
    except (ConfigError, StoreError, FormatError, DecodeError, ModelSetupError, FileNotFoundError,
            StageFailed, SubmitError, WorkerError) as err:
        print(f"hpcxtal {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head or less that closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print(f"hpcxtal {args.command}: interrupted; completed files are kept, "
              "partial ones were removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
