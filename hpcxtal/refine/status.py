"""Row outcomes of refinement as data, importable without torch."""
from __future__ import annotations

from enum import StrEnum


class RefineStatus(StrEnum):
    """How a row's refinement ended (the ``refine_status`` column; the human reason, where
    there is one, is the separate ``refine_reason`` column)."""

    CONVERGED = "converged"  # loss below the tolerance
    VALID_FLAT = "valid_flat"  # valid, and the loss stopped falling
    STALLED = "stalled"  # invalid, stopped improving, restarts used up
    MAX_STEPS = "max_steps"  # step cap reached
    FAILED = "failed"  # non-finite loss, gradient or coordinates; see refine_reason
    STRUCTURE = "structure"  # a structure row: not refined, the CN rule checked on its atoms
