import os
import socket
import subprocess
import sys

from hpcxtal.store.tempfiles import find_temp_files, remove_stale_temp_files


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_temp_files_of_gone_local_writers_are_removed(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    (tmp_path / "relax").mkdir()
    gone = tmp_path / "relax" / f".relax-0001.h5.tmp-{dead}@{host}"
    live = tmp_path / f".pool.h5.tmp-{os.getpid()}@{host}"
    remote = tmp_path / f".pool.h5.tmp-{dead}@another-node"
    legacy = tmp_path / f".pool.h5.tmp-{dead}"
    folder = tmp_path / f".cifs.tmp-{dead}@{host}"
    for path in (gone, live, remote, legacy):
        path.write_text("partial")
    folder.mkdir()
    (folder / "1.cif").write_text("partial")
    (tmp_path / "pool.h5").write_text("kept")
    found = {t.path: t for t in find_temp_files(tmp_path)}
    assert set(found) == {gone, live, remote, legacy, folder}
    assert found[gone].writer_gone and not found[live].writer_gone
    assert not found[remote].writer_gone and found[legacy].host is None
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([gone, folder])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, remote.name, legacy.name, "pool.h5", "relax"])
