"""The sample stage's config section (no torch here, so reading a campaign's config
stays cheap)."""
from __future__ import annotations

from dataclasses import dataclass

from hpcxtal.generate.conditions import MODES


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Sample the candidate pool from a trained generator (instead of importing it)."""

    n: int = 200
    model: str = "default"  # 'default' = the generator shipped with hpcxtal, or a model file of any kind
    conditions: str = "mix"  # train | learned | mix (see hpcxtal.generate.conditions)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.conditions not in MODES:
            raise ValueError(f"conditions must be one of {list(MODES)}, got {self.conditions!r}")
