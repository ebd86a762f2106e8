"""Progress reporting: a bar at a terminal, periodic log lines elsewhere (batch jobs),
and, while a campaign stage runs on a shard, a small progress file in the campaign
(rows done, rate, ETA; atomically replaced) that ``hpcxtal status`` shows."""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("hpcxtal.progress")
#: Seconds between progress log lines when not at a terminal.
LOG_INTERVAL_S = 30.0
#: Seconds between rewrites of a progress file.
FILE_INTERVAL_S = 5.0

_sink: dict | None = None  # the progress file this process writes to, if any


@contextmanager
def recording(path: Path, stage: str, shard: int | None) -> Iterator[None]:
    """Record the progress :func:`note` reports into ``path`` while the block runs; the
    file says ``done`` (or ``failed``) when it ends."""
    global _sink
    _sink = {"path": Path(path), "written": 0.0, "state": {
        "stage": stage, "shard": shard, "host": socket.gethostname(), "pid": os.getpid(),
        "started": time.time(), "done": 0, "total": None, "status": "running"}}
    _write(force=True)
    try:
        yield
        _sink["state"]["status"] = "done"
    except BaseException:
        _sink["state"]["status"] = "failed"
        raise
    finally:
        _write(force=True)
        _sink = None


def note(done: int, total: int | None = None) -> None:
    """Report ``done`` of ``total`` rows to the progress file being recorded (if any).
    Inside :func:`span`, ``done``/``total`` is the fraction of that part done."""
    if _sink is None:
        return
    state, scope = _sink["state"], _sink.get("part")
    if scope is not None:
        offset, rows, whole = scope
        done = offset + (rows * done // total if total else 0)
        total = whole
    state["done"], state["total"] = int(done), total if total is None else int(total)
    _write()


@contextmanager
def span(offset: int, rows: int, whole: int) -> Iterator[None]:
    """While the block computes ``rows`` rows after the first ``offset`` of ``whole``
    (a chunk of a file), the progress it notes counts in rows of the whole, so that one
    progress file keeps one meaning (rows of the shard) whatever loop reports it."""
    if _sink is None:
        yield
        return
    _sink["part"] = (offset, rows, whole)
    try:
        yield
    finally:
        _sink.pop("part", None)


def _write(force: bool = False) -> None:
    now = time.time()
    if not force and now - _sink["written"] < FILE_INTERVAL_S:
        return
    _sink["written"] = now
    from hpcxtal.store.hdf5 import write_text_atomic

    try:
        write_text_atomic(_sink["path"], json.dumps(dict(_sink["state"], updated=now)))
    except OSError:  # progress is a courtesy: never fail a stage over it
        pass


def describe(path: Path) -> str | None:
    """One line for ``hpcxtal status`` from a progress file (None if there is none)."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    done, total = state.get("done", 0), state.get("total")
    elapsed = max(state.get("updated", 0) - state.get("started", 0), 1e-9)
    rate = done / elapsed
    what = f"{done}/{total}" if total else f"{done}"
    eta = (f", ETA {(total - done) / rate / 60:.1f} min" if total and rate > 0
           and state.get("status") == "running" else "")
    age = time.time() - state.get("updated", 0)
    return (f"{state.get('status')}: {what} rows, {rate:.2f} rows/s{eta} (on "
            f"{state.get('host')} pid {state.get('pid')}, updated {age:.0f} s ago)")


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Yield ``items`` while showing progress (tqdm at a terminal, else log lines) and
    noting it in the progress file being recorded."""
    if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
        from tqdm import tqdm

        for k, item in enumerate(tqdm(items, total=total, desc=desc, leave=False,
                                      dynamic_ncols=True), 1):
            yield item
            note(k, total)
        return
    start = last = time.monotonic()
    for k, item in enumerate(items, 1):
        yield item
        note(k, total)
        now = time.monotonic()
        if now - last >= LOG_INTERVAL_S:
            last = now
            rate = k / (now - start)
            log.info("%s: %d%s done (%.1f/s)", desc, k, f"/{total}" if total else "", rate)
