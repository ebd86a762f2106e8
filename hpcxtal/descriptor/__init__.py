"""Batched, differentiable geometry and descriptors: neighbour lists, SO(3) power
spectrum, the loss against a reference environment and the coordination check.

Entry points for refinement: :func:`build_batch`, :func:`positions`, :func:`spectrum`,
:func:`loss`, :func:`validity`, :func:`rows_from_R` (see docs/ARCHITECTURE.md).
"""
from hpcxtal.descriptor.batch import Batch, Geometry, build_batch, positions, rows_from_R
from hpcxtal.descriptor.so3 import SO3, SO3Config
from hpcxtal.descriptor.target import Environment, Target, load_targets, loss, spectrum, validity

__all__ = ["Batch", "Geometry", "build_batch", "positions", "rows_from_R", "SO3", "SO3Config",
           "Environment", "Target", "load_targets", "loss", "spectrum", "validity"]
