"""The rescore stage's config section: which structures are re-relaxed, with which
model and optimiser settings (no torch import: reading a config stays cheap)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hpcxtal.config import resource
from hpcxtal.relax.config import RelaxConfig, RelaxSettings

#: The model name that means CHGNet with the weights its wheel carries.
CHGNET = "chgnet"
#: Default margin (eV/atom) above the low-energy window within which screened
#: structures are rescored (BENCHMARKS.md "Rescoring tier": the largest downward shift
#: of 46 SACADA structures was 0.109 eV/atom).
DEFAULT_MARGIN_EV = 0.15


@dataclass(frozen=True, kw_only=True)
class RescoreConfig(RelaxSettings):
    """Re-relax the screen's structures whose ``e_rel`` lies within the low-energy
    window plus ``margin_eV`` with a second, more accurate model.

    ``model``: ``chgnet`` (the default: CHGNet 0.3.0, the checkpoint its wheel carries)
    or a mace-torch model: a file path, or a foundation name (``mace-mp-0-medium`` ...)
    looked up in ``model_dir`` and mace's cache directory. Nothing is ever downloaded;
    a missing file stops the stage with one line naming it. The optimiser settings mean
    what they mean in the relax section (``relax:``); the defaults are the production
    ones (fmax 0.05 eV/Å), not the demo's coarse screen. ``window_eV``: the low-energy
    window the margin is added to (null: in a campaign its low-energy window, merge's
    where set, else relax's; on files the relax output's recorded window).
    """

    model: str = CHGNET
    model_dir: str | None = None
    margin_eV: float = DEFAULT_MARGIN_EV
    window_eV: float | None = None
    chunk_rows: int = resource(8)  # rescored rows per chunk (few rows, each a costly model)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name 'chgnet' or a MACE model file")
        if self.margin_eV < 0:
            raise ValueError(f"margin_eV must not be negative, got {self.margin_eV}")
        if self.window_eV is not None and self.window_eV < 0:
            raise ValueError(f"window_eV must not be negative (or null), got {self.window_eV}")
        super().__post_init__()

    @property
    def backend(self) -> str:
        """The energy backend the model name selects: chgnet or mace."""
        return "chgnet" if self.model == CHGNET else "mace"

    def relax_config(self) -> RelaxConfig:
        """The relax settings of the rescoring model (the relax stage's engine runs it)."""
        same = {f.name for f in dataclasses.fields(RelaxConfig)} & {
            f.name for f in dataclasses.fields(self)}
        values = {name: getattr(self, name) for name in same if name != "model"}
        return RelaxConfig(backend=self.backend, model=None if self.model == CHGNET else self.model,
                           **values)
