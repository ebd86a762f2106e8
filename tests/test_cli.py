import json
import subprocess
import sys

import pytest

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
