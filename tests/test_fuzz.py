"""Property-based fuzzing of bad input (issue 15): malformed CSV, CIF, extxyz, HDF5 and
YAML files and command-line options, through the real command (in this process).

Every example must end with exit status 0 or 2, no traceback and no internal error,
its input files unchanged, every input row in the output or its quarantine, and no
output or temporary file left by a failed command. Each property runs twice: with a
fixed seed (the same examples in every CI run) and with a random one (new examples;
a failure prints the seed to reproduce it). Examples are small and the expensive
stages (refine, relax) are not fuzzed here, so the suite stays well under a minute.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import small_pool_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcxtal.store.formats import CSV_COLUMNS
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table, str_array

SEEDS = pytest.mark.parametrize("derandomize", [True, False], ids=["fixed-seed", "random-seed"])


def fuzz_settings(derandomize: bool, examples: int):
    """Settings of one run: ``examples`` examples, no deadline, nothing stored between
    runs; ``derandomize`` = the fixed seed."""
    return settings(max_examples=examples, deadline=None, derandomize=derandomize,
                    database=None, suppress_health_check=list(HealthCheck))


def _digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def run_checked(cli, args: list, inputs: list[Path], outputs: list[Path]) -> int:
    """Run ``hpcxtal ARGS`` and check what must hold for any input: exit status 0 or
    2, no traceback or internal error, inputs unchanged, no temporary file left, and
    after a failure no output. Returns the exit status."""
    before = _digest(inputs)
    existed = {p for p in outputs if p.exists()}
    code, _, err = cli(*args)
    assert code in (0, 2), (args, code, err)
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    assert _digest(inputs) == before, args
    folders = {p.parent for p in inputs + outputs}
    assert not [p for d in folders if d.is_dir() for p in d.iterdir() if ".tmp-" in p.name]
    if code == 2:
        assert all(p.exists() == (p in existed) for p in outputs), (args, err)
    return code


def _rows_in(path: Path) -> int:
    table, quarantine = read_table(path)
    return len(table) + (0 if quarantine is None else len(quarantine))


# ---- CSV ----------------------------------------------------------------------------

_ODD = st.sampled_from(["nan", "inf", "-inf", "", "abc", "1e400", "-0", "0x10", "1,5", "\t"])
_FIELD_VALUES = {
    "spg": st.integers(-5, 240), "length": st.floats(-2, 30), "angle": st.floats(-1, 4),
    "wp": st.integers(-2, 80), "coord": st.floats(-1.5, 1.5),
}


def _kind(column: str) -> str:
    if column == "spg":
        return "spg"
    if column in ("a", "b", "c"):
        return "length"
    if column in ("alpha", "beta", "gamma"):
        return "angle"
    return "wp" if column.startswith("wp") else "coord"


@st.composite
def csv_rows(draw) -> list[str]:
    """One data line: near-valid numbers, some replaced by odd text, fields dropped or
    added."""
    fields = []
    for column in CSV_COLUMNS:
        value = draw(_FIELD_VALUES[_kind(column)])
        fields.append(str(value))
    for _ in range(draw(st.integers(0, 3))):
        fields[draw(st.integers(0, len(fields) - 1))] = draw(_ODD).replace(",", ";")
    cut = draw(st.sampled_from([len(fields)] * 6 + [1, 5, 38, 45]))
    fields = (fields + ["7"] * 6)[:cut]
    return ",".join(fields)


@st.composite
def csv_files(draw) -> tuple[bytes, int | None]:
    """(bytes of a CSV file, number of data lines or None where the file cannot be a
    tabular crystal CSV at all)."""
    header = list(CSV_COLUMNS)
    valid_header = draw(st.booleans()) or draw(st.booleans())
    if not valid_header:
        del header[draw(st.integers(0, len(header) - 1))]
    lines = draw(st.lists(csv_rows(), max_size=6))
    text = "\n".join([",".join(header), *lines]) + draw(st.sampled_from(["\n", ""]))
    n_lines = len(lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "garbage"]))
    if encoding == "garbage":
        data = text.encode()
        at = draw(st.integers(1, len(data)))
        return data[:at] + draw(st.sampled_from([b"\xfa\xfb", b"\x00", b"\xc3"])) + data[at:], None
    return text.encode(encoding), n_lines if valid_header else None


@SEEDS
def test_fuzz_csv_import(cli, tmp_path, derandomize):
    @fuzz_settings(derandomize, 30)
    @given(csv_files())
    def prop(case):
        data, n_lines = case
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            src, out = Path(d) / "in.csv", Path(d) / "pool.h5"
            src.write_bytes(data)
            code = run_checked(cli, ["import", src, "-o", out, "-q"], [src], [out])
            if n_lines is None:
                return
            if code == 0:
                assert _rows_in(out) == n_lines
    prop()


# ---- HDF5 tables written by hand (any values) ----------------------------------------

_CELL = st.one_of(st.floats(-5, 200), st.sampled_from([0.0, -1.0, math.nan, math.inf, 90.0, 2.46]))


@st.composite
def raw_tables(draw) -> Table:
    """A table of any values in the row columns, as a writer bypassing decode makes."""
    n = draw(st.integers(0, 5))
    spg = draw(st.lists(st.one_of(st.integers(-300, 300), st.integers(1, 230)), min_size=n, max_size=n))
    cell = [[draw(_CELL) for _ in range(6)] for _ in range(n)]
    wps = [[draw(st.one_of(st.integers(-128, 127), st.integers(-1, 3))) for _ in range(8)]
           for _ in range(n)]
    xyz = [[[draw(st.one_of(st.floats(-2, 2), st.just(math.nan))) for _ in range(3)]
            for _ in range(8)] for _ in range(n)]
    return Table({"id": np.arange(n, dtype=np.uint64), "spg": np.array(spg, dtype=np.int16),
                  "wps": np.array(wps, dtype=np.int8).reshape(n, 8),
                  "cell": np.array(cell, dtype=float).reshape(n, 6),
                  "xyz": np.array(xyz, dtype=float).reshape(n, 8, 3),
                  "origin": str_array(["fuzz"] * n)})


@SEEDS
def test_fuzz_h5_import_then_shard(cli, tmp_path, derandomize):
    @fuzz_settings(derandomize, 20)
    @given(raw_tables(), st.integers(1, 7))
    def prop(table, k):
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            src, pool, shards = Path(d) / "raw.h5", Path(d) / "pool.h5", Path(d) / "shards"
            write_table(src, table, kind="pool")
            assert run_checked(cli, ["import", src, "-o", pool, "-q"], [src], [pool]) == 0
            assert _rows_in(pool) == len(table)
            good, _ = read_table(pool)
            code = run_checked(cli, ["shard", pool, "-k", k, "-o", shards, "-q"], [pool, src], [])
            assert (code == 0) == (1 <= k <= len(good)), code
            if code == 0:
                assert sum(len(read_table(p)[0]) for p in shards.glob("shard-*.h5")) == len(good)
    prop()


# ---- structure files: extxyz written by ASE, CIF text with damage -------------------

@st.composite
def structures(draw):
    """ASE Atoms of 1-5 atoms: C mostly, other elements sometimes, any cell (zero =
    molecule), positions that may overlap."""
    from ase import Atoms

    n = draw(st.integers(1, 5))
    symbols = [draw(st.sampled_from(["C"] * 6 + ["Si", "N"])) for _ in range(n)]
    frac = [[draw(st.floats(0, 1)) for _ in range(3)] for _ in range(n)]
    if draw(st.integers(0, 5)) == 0:
        return Atoms(symbols, positions=np.array(frac) * 3, pbc=False)
    lengths = [draw(st.floats(0.3, 8)) for _ in range(3)]
    angles = [draw(st.floats(40, 140)) for _ in range(3)]
    try:
        return Atoms(symbols, scaled_positions=frac, cell=lengths + angles, pbc=True)
    except Exception:  # an impossible cell: keep it as a molecule
        return Atoms(symbols, positions=np.array(frac) * 3, pbc=False)


@SEEDS
def test_fuzz_extxyz_import(cli, tmp_path, derandomize):
    import ase.io

    @fuzz_settings(derandomize, 15)
    @given(st.lists(structures(), min_size=1, max_size=3))
    def prop(images):
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            src, out = Path(d) / "in.extxyz", Path(d) / "pool.h5"
            ase.io.write(src, images, format="extxyz")
            if run_checked(cli, ["import", src, "-o", out, "-q"], [src], [out]) == 0:
                assert _rows_in(out) == len(images)
    prop()


def _cif_lines() -> list[str]:
    from conftest import cif_text

    return cif_text([("C", 1.0)]).splitlines()


@SEEDS
def test_fuzz_cif_import(cli, tmp_path, derandomize):
    import ase.io

    lines = _cif_lines()

    @fuzz_settings(derandomize, 15)
    @given(st.lists(st.tuples(st.integers(0, len(lines) - 1),
                              st.sampled_from(["drop", "dup", "garbage", "number"])), max_size=3),
           st.sampled_from(["", "-1", "0", "nan", "1e9", "Si", "0.5", "x y"]))
    def prop(edits, token):
        text = list(lines)
        for at, how in edits:
            at = min(at, len(text) - 1)
            if how == "drop":
                del text[at]
            elif how == "dup":
                text.insert(at, text[at])
            elif how == "garbage":
                text[at] = token
            else:
                parts = text[at].split()
                text[at] = " ".join(parts[:-1] + [token]) if parts else token
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            src, out = Path(d) / "in.cif", Path(d) / "pool.h5"
            src.write_text("\n".join(text) + "\n")
            if run_checked(cli, ["import", src, "-o", out, "-q"], [src], [out]) == 0:
                assert _rows_in(out) == len(ase.io.read(src, index=":", format="cif"))
    prop()


# ---- campaign YAML ----------------------------------------------------------------

_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 600), st.floats(-2, 5),
                   st.sampled_from(["", "x", "sacada", "graphite", "nowhere", "cuda:0", "local"]),
                   st.lists(st.sampled_from(["sacada", "missing.csv", 3]), max_size=2))
_KEYS = {"": ["name", "seed", "site", "sample", "import", "shard", "refine", "relax", "bogus"],
         "sample": ["n", "model", "conditions"], "import": ["inputs", "symmetry_tolerance_A",
                                                            "snap_tolerance_A"],
         "shard": ["n_shards"], "refine": ["target", "max_steps", "device", "dtype"],
         "relax": ["backend", "fmax_eV_per_A", "max_steps"]}


@st.composite
def campaign_yaml(draw) -> str:
    import yaml

    if draw(st.integers(0, 6)) == 0:
        return draw(st.sampled_from(["name: [unclosed\n", ": :\n", "- a\n- b\n", "\t\x00\n", ""]))
    data: dict = {"name": "fuzz"} if draw(st.booleans()) else {}
    for key in draw(st.lists(st.sampled_from(_KEYS[""]), max_size=4, unique=True)):
        if key in _KEYS and draw(st.booleans()):
            data[key] = {k: draw(_VALUE) for k in draw(st.lists(st.sampled_from(_KEYS[key]),
                                                                 max_size=2, unique=True))}
        else:
            data[key] = draw(_VALUE)
    return yaml.safe_dump(data)


@SEEDS
def test_fuzz_init_config(cli, tmp_path, derandomize):
    @fuzz_settings(derandomize, 30)
    @given(campaign_yaml())
    def prop(text):
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            cfg, camp = Path(d) / "c.yaml", Path(d) / "new" / "camp"
            cfg.write_text(text)
            code = run_checked(cli, ["init", camp, "--config", cfg, "-q"], [cfg], [camp])
            assert (code == 0) == (camp / "campaign.yaml").is_file()
            if code == 2:
                assert not (Path(d) / "new").exists()
    prop()


# ---- command-line options on small files --------------------------------------------

_OPTION = st.one_of(st.integers(-3, 12).map(str),
                    st.sampled_from(["-1", "0", "nan", "inf", "-inf", "1e999", "2.5", "", "x",
                                     "cuda:0", "cpu", "99999999999999999999", "0.01"]))


@st.composite
def command_lines(draw) -> tuple[list[str], str]:
    """(arguments after the files, command) for cheap commands with fuzzed options."""
    command = draw(st.sampled_from(["import", "shard", "export", "db", "info", "topology"]))
    options = {"import": ["--snap-tolerance", "--symmetry-tolerance"],
               "shard": ["-k"], "export": ["-f"], "db": ["--top", "--spg", "--max-e-rel"],
               "info": [], "topology": ["--cutoff", "--depth", "-j"]}[command]
    args = []
    for option in draw(st.lists(st.sampled_from(options), max_size=2, unique=True)) if options else []:
        value = draw(st.sampled_from(["csv", "cif", "extxyz", "ase", "pdb"])) if option == "-f" \
            else draw(_OPTION)
        args += [option, value]
    return args, command


@SEEDS
def test_fuzz_command_line_options(cli, tmp_path, derandomize):
    pool = small_pool_file(tmp_path / "pool.h5", n=2)

    @fuzz_settings(derandomize, 30)
    @given(command_lines())
    def prop(case):
        options, command = case
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            out = Path(d) / "out"
            if command in ("db", "info"):
                args, outputs = [command, pool, *options], []
            elif command == "export" and "-f" not in options:
                args, outputs = [command, pool, "-f", "csv", "-o", out, *options], [out]
            else:
                args, outputs = [command, pool, "-o", out, *options], [out]
            if command == "shard" and "-k" not in options:
                args += ["-k", "1"]
            if command == "topology":
                args += ["-j", "1"] if "-j" not in options else []
            run_checked(cli, [*args, "-q"], [pool], outputs)
    prop()
