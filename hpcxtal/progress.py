"""Progress reporting: a bar at a terminal, periodic log lines elsewhere (batch jobs)."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("hpcxtal.progress")
#: Seconds between progress log lines when not at a terminal.
LOG_INTERVAL_S = 30.0


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Yield ``items`` while showing progress (tqdm at a terminal, else log lines)."""
    if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    for k, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= LOG_INTERVAL_S:
            last = now
            rate = k / (now - start)
            log.info("%s: %d%s done (%.1f/s)", desc, k, f"/{total}" if total else "", rate)
