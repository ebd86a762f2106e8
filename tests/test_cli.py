import json
import os
import subprocess
import sys

import pytest
from conftest import one_line_error, small_pool_file

from hpcxtal.cli import main
from hpcxtal.store.hdf5 import read_table


def test_every_command_has_help():
    out = subprocess.run([sys.executable, "-m", "hpcxtal.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("init", "import", "shard", "export", "info", "status"):
        assert command in out
        sub = subprocess.run([sys.executable, "-m", "hpcxtal.cli", command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "usage: hpcxtal " + command in sub


def test_campaign_init_import_shard_status(tmp_path, capsys):
    camp = tmp_path / "camp"
    assert main(["init", str(camp), "--shards", "3", "-q"]) == 0
    assert main(["import", str(camp), "-q"]) == 0
    assert main(["shard", str(camp), "-q"]) == 0
    capsys.readouterr()
    assert main(["status", str(camp)]) == 0
    out = capsys.readouterr().out
    assert "import     done     rows 144, quarantined 6" in out
    assert "shard      done     rows 144, shards 3" in out
    assert "refine     pending  0/3 shards complete" in out
    manifest = json.loads((camp / "manifest.json").read_text())
    assert manifest["stages"]["import"]["counts"] == {"rows": 144, "quarantined": 6}
    assert manifest["stages"]["shard"]["outputs"][0] == "shards/shard-0000.h5"
    ids = sorted(int(i) for k in range(3)
                 for i in read_table(camp / "shards" / f"shard-{k:04d}.h5")[0]["id"])
    assert ids == sorted(int(i) for i in read_table(camp / "pool.h5")[0]["id"])


def test_finished_stage_is_a_no_op_and_a_corrupt_one_is_redone(tmp_path, caplog):
    camp = tmp_path / "camp"
    main(["init", str(camp), "-q"])
    main(["import", str(camp), "-q"])
    mtime = (camp / "pool.h5").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert main(["import", str(camp)]) == 0
    assert "nothing to do" in caplog.text
    assert (camp / "pool.h5").stat().st_mtime_ns == mtime
    with open(camp / "pool.h5", "r+b") as fh:
        fh.truncate(1000)
    assert main(["import", str(camp), "-q"]) == 0
    assert len(read_table(camp / "pool.h5")[0]) == 144


def test_import_export_info_on_files(generated_csv, tmp_path, capsys):
    pool = tmp_path / "pool.h5"
    assert main(["import", str(generated_csv), "-o", str(pool), "-q"]) == 0
    assert main(["export", str(pool), "-f", "csv", "-o", str(tmp_path / "out.csv"), "-q"]) == 0
    assert main(["export", str(pool), "-f", "extxyz", "-o", str(tmp_path / "out.extxyz"), "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(pool), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verifies"] and info["attrs"]["n_rows"] + info["n_quarantined"] == 999
    with open(pool, "r+b") as fh:
        fh.truncate(pool.stat().st_size - 5000)
    assert main(["info", str(pool)]) == 1
    assert "verifies: NO" in capsys.readouterr().out


def test_shard_explicit_files(sacada, tmp_path):
    from hpcxtal.data import SACADA_PATH

    assert main(["shard", str(SACADA_PATH), "-k", "4", "-o", str(tmp_path / "s"), "-q"]) == 0
    assert len(list((tmp_path / "s").glob("shard-*.h5"))) == 4


@pytest.mark.parametrize("text,message", [
    ("name: x\nshard: {n_shards: two}\n", "shard.n_shards: expected int, got 'two'"),
    ("name: x\nshards: 3\n", "unknown key 'shards'; valid keys are"),
    ("name: x\nimport: {inputs: []}\n", "inputs: give at least one file"),
    ("seed: 1\n", "missing required key 'name'"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_bad_campaign_config_gives_one_clear_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["init", str(tmp_path / "c"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "not a campaign directory" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "p.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    main(["init", str(tmp_path / "c"), "-q"])
    assert main(["shard", str(tmp_path / "c")]) == 2
    assert "run 'hpcxtal import" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "c")]) == 2
    assert "already a campaign directory" in capsys.readouterr().err


def test_no_command_writes_over_its_own_input(cli, tmp_path):
    pool = small_pool_file(tmp_path / "x.h5")
    before = pool.read_bytes()
    os.link(pool, tmp_path / "link.h5")
    for args in (("refine", pool, "-o", pool), ("refine", pool, "-o", tmp_path / "link.h5"),
                 ("topology", pool, "-o", tmp_path / "." / "x.h5"),
                 ("import", pool, "-o", pool), ("export", pool, "-f", "csv", "-o", pool),
                 ("shard", tmp_path / "s" / "shard-0001.h5", "-k", "2", "-o", tmp_path / "s")):
        if args[0] == "shard":
            (tmp_path / "s").mkdir()
            os.link(pool, tmp_path / "s" / "shard-0001.h5")
        code, _, err = cli(*args)
        assert code == 2 and "would overwrite the input" in one_line_error(err), args
    assert pool.read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (("import", "x.cif", "-o", "p.h5", "--symmetry-tolerance", "-1"), "--symmetry-tolerance: -1"),
    (("import", "x.cif", "-o", "p.h5", "--symmetry-tolerance", "nan"), "out of range"),
    (("shard", "p.h5", "-o", "s", "-k", "0"), "-k/--shards: 0 is out of range"),
    (("refine", "p.h5", "-o", "r.h5", "--steps", "-5"), "--steps: -5"),
    (("refine", "p.h5", "-o", "r.h5", "--device", "gpu7"), "'gpu7' is not a device"),
    (("relax", "p.h5", "-o", "r.h5", "--fmax", "0"), "--fmax: 0 is out of range"),
    (("sample", "-n", "-3", "-o", "p.h5"), "-n: -3"),
    (("init", "c", "--seed", "-1"), "--seed: -1"),
    (("db", "d.h5", "--spg", "231"), "give 1-230"),
])
def test_numeric_options_are_checked_at_parse_time(cli, args, message):
    code, _, err = cli(*args)
    assert code == 2 and message in err and "Traceback" not in err


def test_negative_symmetry_tolerance_is_no_segfault(cif_file, tmp_path):
    cif = cif_file(tmp_path / "c.cif", [("C", 1.0)])
    done = subprocess.run([sys.executable, "-m", "hpcxtal.cli", "import", str(cif), "-o",
                           str(tmp_path / "p.h5"), "--symmetry-tolerance", "-1"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "out of range" in done.stderr


def test_shard_count_beyond_the_rows_is_one_line(cli, tmp_path):
    pool = small_pool_file(tmp_path / "p.h5")
    code, _, err = cli("shard", pool, "-k", "5", "-o", tmp_path / "s")
    assert code == 2 and "use at most 3 shards" in one_line_error(err)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_refine_on_a_missing_cuda_device_is_one_line(cli, tmp_path):
    pool = small_pool_file(tmp_path / "p.h5")
    code, _, err = cli("refine", pool, "-o", tmp_path / "r.h5", "--device", "cuda:0")
    assert code == 2 and "no CUDA device(s); use cpu or auto" in one_line_error(err)
    assert not (tmp_path / "r.h5").exists()


def test_a_table_of_the_wrong_kind_is_refused(cli, tmp_path):
    relaxed = small_pool_file(tmp_path / "relax.h5", kind="relax")
    code, _, err = cli("refine", relaxed, "-o", tmp_path / "r.h5")
    assert code == 2 and "a 'relax' table, but refine needs 'pool'" in one_line_error(err)
    pool = small_pool_file(tmp_path / "pool.h5")
    code, _, err = cli("merge", relaxed, "-o", tmp_path / "db.h5", "--pool", relaxed)
    assert code == 2 and "but merge --pool needs 'pool'" in one_line_error(err)
    code, _, err = cli("merge", pool, "-o", tmp_path / "db.h5")
    assert code == 2 and "a 'pool' table, but merge needs 'relax'" in one_line_error(err)
    code, _, err = cli("train", pool, "-o", tmp_path / "m.pt")
    assert code == 2 and "a 'pool' table, but train needs 'training'" in one_line_error(err)


def test_full_disk_and_unwritable_folder_are_one_line(cli, tmp_path, monkeypatch):
    import errno

    pool = small_pool_file(tmp_path / "p.h5")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.csv"))

    monkeypatch.setattr("hpcxtal.store.formats.csv.writer", full)
    code, _, err = cli("export", pool, "-f", "csv", "-o", tmp_path / "out.csv")
    assert code == 2 and "No space left on device; free some space" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]
    monkeypatch.undo()

    import h5py

    real = h5py.File

    def read_only(path, mode, **kwargs):  # root may write anywhere: fake the folder's mode
        if mode == "r":
            return real(path, mode, **kwargs)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("hpcxtal.store.hdf5.h5py.File", read_only)
    code, _, err = cli("import", "sacada", "-o", tmp_path / "ro" / "p.h5")
    assert code == 2 and "Permission denied; check the permissions" in one_line_error(err)


def test_a_bug_is_one_line_and_its_traceback_shows_with_v(cli, tmp_path, monkeypatch):
    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr("hpcxtal.cli.files.cmd_info", broken)
    code, _, err = cli("info", tmp_path / "x.h5")
    assert code == 2 and "internal error: KeyError: 'oops'" in err and "Traceback" not in err
    code, _, err = cli("info", tmp_path / "x.h5", "-v")
    assert code == 2 and "Traceback" in err and "internal error" in err


def test_utf16_csv_and_molecule_import_from_the_command_line(cli, generated_csv, tmp_path):
    text = "\n".join(open(generated_csv).read().splitlines()[:4]) + "\n"
    (tmp_path / "u16.csv").write_bytes(text.encode("utf-16"))
    (tmp_path / "mol.xyz").write_text("2\nmolecule\nC 0 0 0\nC 0 0 1.4\n")
    code, _, err = cli("import", tmp_path / "u16.csv", tmp_path / "mol.xyz", "-o", tmp_path / "p.h5")
    assert code == 0 and "Traceback" not in err
    table, quarantine = read_table(tmp_path / "p.h5")
    assert len(table) + len(quarantine) == 4
    assert "no periodic 3D cell" in list(quarantine["reason"])[-1]


@pytest.mark.parametrize("text,message", [
    ("name: x\nsite: nowhere\n", "site 'nowhere'"),
    ("name: x\nrefine: {target: diamondz}\n", "target 'diamondz' is not defined"),
    ("name: x\nshard: {n_shards: 500}\n", "pool can have at most 144 rows"),
    ("name: x\nimport: {inputs: [missing.csv]}\n", "missing.csv: no such file"),
    ("name: x\nimport: {symmetry_tolerance_A: -1}\n", "symmetry tolerance -1"),
])
def test_failed_init_leaves_nothing_and_init_works_after(cli, tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, _, err = cli("init", tmp_path / "new" / "camp", "--config", cfg)
    assert code == 2 and message in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    assert cli("init", tmp_path / "new" / "camp", "-q")[0] == 0


def test_status_reports_and_resume_removes_temp_files_of_gone_writers(cli, tmp_path, monkeypatch,
                                                                      caplog):
    import socket

    camp = tmp_path / "c"
    assert cli("init", camp, "-q")[0] == 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    gone = camp / f".pool.h5.tmp-{proc.pid}@{socket.gethostname()}"
    remote = camp / f".pool.h5.tmp-{proc.pid}@elsewhere"
    gone.write_text("partial"), remote.write_text("partial")
    code, out, _ = cli("status", camp)
    assert code == 0 and "leftover temporary files: 2 (1 of writers gone" in out
    assert f"{gone} (pid {proc.pid} on {socket.gethostname()}, gone)" in out
    monkeypatch.setattr("hpcxtal.hpc.driver.run_campaign", lambda *a, **k: [])
    with caplog.at_level("WARNING"):
        assert cli("resume", camp, "--stage", "import")[0] == 0
    assert f"{gone}: temporary file of a writer that is gone; removed" in caplog.text
    assert not gone.exists() and remote.exists()


def test_stages_refuse_rows_that_never_passed_decode(cli, synthetic, tmp_path):
    from hpcxtal.store.hdf5 import write_table

    table = synthetic(4)
    table.columns["spg"][1] = 0
    table.columns["cell"][2, 0] = float("nan")
    table.columns["wps"][3, 0] = 77
    raw = write_table(tmp_path / "raw.h5", table, kind="pool")
    for command in ("refine", "topology", "relax"):
        code, _, err = cli(command, raw, "-o", tmp_path / "out.h5")
        line = one_line_error(err)
        assert code == 2 and "row id 1: space group 0 is not in 1-230 (and 2 more rows)" in line
        assert "'hpcxtal import" in line and not (tmp_path / "out.h5").exists()
