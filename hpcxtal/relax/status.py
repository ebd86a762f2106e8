"""Row outcomes of the relax stage as data, importable without torch."""
from __future__ import annotations

from enum import StrEnum


class RelaxStatus(StrEnum):
    """Outcome of one row in the relax stage (the ``status`` column; the human reason is
    the separate ``status_reason`` column)."""

    CONVERGED = "converged"
    NOT_CONVERGED = "not_converged"  # step cap reached
    FAILED = "failed"  # see status_reason
    SKIPPED = "skipped"  # not relaxed; see status_reason
