"""Errors of the energy stage, importable without torch (the CLI catches them)."""
from __future__ import annotations


class ModelSetupError(RuntimeError):
    """An energy model that cannot be set up (missing weights, unknown backend or name);
    the message says which file is missing and where to put it."""
