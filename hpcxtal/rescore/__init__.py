"""The rescoring tier: the screen's promising structures re-relaxed with a
foundation-grade energy model (CHGNet's bundled weights by default, or a mace-torch
model file), both energies kept (:mod:`hpcxtal.rescore.stage`)."""
