"""Checks of command-line arguments before any command runs.

Parse-time ``type=`` functions for numbers (a negative tolerance or count is an argparse
error, never a crash deep inside spglib or torch), the rule that no command writes
over one of its own inputs, and which table kinds each stage takes in file mode.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import re
from pathlib import Path
from typing import Callable

from hpcxtal.crystal.row import SYMMETRY_TOLERANCE_RANGE_A

#: Largest seed: numpy and torch both take it.
MAX_SEED = 2**32 - 1


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (hi None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range; give {lo} or more" if hi is None
                else f"{value} is out of range; give {lo}-{hi}")
        return value
    parse.__name__ = "integer"
    return parse


def float_range(lo: float, hi: float = math.inf, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] ((lo, hi] with ``lo_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value > lo if lo_open else value >= lo
        if not math.isfinite(value) or not low_ok or value > hi:
            bound = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
            upper = "" if hi == math.inf else f" and at most {hi:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a number {bound}{upper}")
        return value
    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
nonnegative_int = int_range(0)
seed = int_range(0, MAX_SEED)
threads = int_range(1, 4096)
positive_float = float_range(0.0, lo_open=True)
nonnegative_float = float_range(0.0)
finite_float = float_range(-math.inf)
symmetry_tolerance = float_range(*SYMMETRY_TOLERANCE_RANGE_A)
space_group = int_range(1, 230)

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device(text: str) -> str:
    """An argparse type: a torch device name (auto, cpu, mps, cuda, cuda:N)."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; give auto, cpu, cuda or "
                                         "cuda:N")
    return text


def objective_term(text: str):
    """An argparse type: one refinement objective term
    (:class:`~hpcxtal.refine.config.ObjectiveTerm`) from ``NAME[=WEIGHT]`` (a built-in,
    an entry point or ``module:attr``), ``FILE.pt[=WEIGHT]`` (a TorchScript module: the
    ``torchscript`` objective) or a YAML mapping as in the config
    (``{name: distance_matrix, weight: 0.5, settings: {reference: ref.cif}}``)."""
    import yaml

    from hpcxtal.config import from_mapping
    from hpcxtal.refine.config import ObjectiveTerm

    try:
        if text.lstrip().startswith("{"):
            return from_mapping(ObjectiveTerm, yaml.safe_load(text), "--objective")
        name, sep, weight_text = text.rpartition("=")
        if not sep:
            name, weight_text = text, "1"
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(f"{text!r}: the weight after '=' is not a number") from None
        if name.endswith(".pt"):
            return ObjectiveTerm(name="torchscript", weight=weight, settings={"file": name})
        return ObjectiveTerm(name=name, weight=weight)
    except (ValueError, yaml.YAMLError) as err:
        raise argparse.ArgumentTypeError(" ".join(str(err).split())) from None


#: Table kinds each stage takes as its input file in file mode (``None``: any table).
STAGE_INPUT_KINDS: dict[str, tuple[str, ...]] = {
    "shard": ("pool", "shard", "known_structures"),
    "refine": ("pool", "shard", "known_structures"),
    "topology": ("refine", "rounds", "round", "pool", "shard", "known_structures"),
    "relax": ("topology", "refine", "rounds", "round", "pool", "shard", "known_structures"),
    "rescore": ("relax",),
    "merge": ("relax", "rescore"),
    "train": ("training",),
}


def _inputs(args: argparse.Namespace) -> list[Path]:
    """The files a command reads, as given on its command line."""
    found = []
    for name in ("source", "sources", "file", "pool", "training", "model", "config"):
        value = getattr(args, name, None)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not isinstance(item, bool):
                found.append(Path(str(item)))
    return found


def _outputs(args: argparse.Namespace) -> list[Path]:
    """The files a command will write, from its ``-o``."""
    out = getattr(args, "output", None)
    if out is None:
        return []
    out = Path(out)
    if args.command == "shard" and args.shards is not None:
        return [out] + [out / f"shard-{i:04d}.h5" for i in range(min(args.shards, 10000))]
    if args.command == "report":
        return [out, out / "report.html", out / "metrics.json"]
    if args.command == "train":
        return [out, out.with_name(out.name + ".ckpt")]
    return [out]


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path, or the same inode (a hard
    link or symlink)."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(args: argparse.Namespace) -> None:
    """Raise ValueError if a command's output would replace one of its inputs (the same
    path, or a hard link of it): ``refine X.h5 -o X.h5`` would lose X's quarantine."""
    for out in _outputs(args):
        for src in _inputs(args):
            if _same(out, src):
                raise ValueError(f"-o {args.output} would overwrite the input {src}; write to "
                                 "another file")


def check_stage_inputs(args: argparse.Namespace) -> None:
    """Raise StoreError if a file-mode stage is given a table of a kind it does not take
    (a relax output to refine, a refine table as merge's pool ...) or, for the stages
    that compute on rows, rows that never passed decode (space group 0, a NaN cell,
    Wyckoff index 77: a file written by hand, not imported)."""
    from hpcxtal.crystal.row import stored_row_problems
    from hpcxtal.store.hdf5 import StoreError, read_table, require_kind

    kinds = STAGE_INPUT_KINDS.get(args.command)
    if kinds is None or getattr(args, "output", None) is None:
        return
    sources = args.sources if args.command == "merge" else [args.source]
    for src in sources:
        if Path(src).is_file():
            require_kind(src, kinds, args.command)
    if args.command == "merge" and args.pool is not None:
        require_kind(args.pool, ("pool",), "merge --pool")
    if args.command in ("shard", "refine", "topology", "relax") and Path(args.source).is_file():
        table, _ = read_table(args.source)
        problems = stored_row_problems(table["spg"], table["cell"], table["wps"], table["xyz"],
                                       table["species"])
        bad = [k for k, p in enumerate(problems) if p]
        if bad:
            more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
            raise StoreError(f"{args.source}: row id {int(table['id'][bad[0]])}: "
                             f"{problems[bad[0]]}{more}; 'hpcxtal import {args.source} -o "
                             "POOL.h5' quarantines such rows")


#: What to do about an operating-system error, by errno.
_OS_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some of your quota or write elsewhere",
    errno.EACCES: "check the permissions, or write elsewhere",
    errno.EPERM: "check the permissions, or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "remove it or choose another name",
}


def describe_failure(err: BaseException) -> tuple[str, bool]:
    """One line for the failure ``err`` (what, which file, what to do) and whether it is
    a bug in hpcxtal rather than bad input or a failing machine. Bad input and the
    machine raise ValueError (config, format, decode errors) or OSError (files, disks,
    permissions: StoreError too); hpcxtal's own error types (stage failed, submit
    refused, model setup) say what to do; anything else is a bug. Imports nothing, so
    it works whatever failed to import."""
    own = type(err).__module__.startswith("hpcxtal.")
    bug = not (own or isinstance(err, (ValueError, OSError)))
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
        hint = _OS_HINTS.get(err.errno or 0)
        text += f"; {hint}" if hint else ""
    elif isinstance(err, OSError) and err.errno in _OS_HINTS and err.strerror:
        text = f"{err.strerror}; {_OS_HINTS[err.errno]}"
    else:
        text = str(err) or type(err).__name__
    if bug:
        text = f"{type(err).__name__}: {text}"
    return " ".join(text.split()), bug
