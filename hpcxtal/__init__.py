"""hpcxtal: find crystals with a chosen local environment, at cluster scale."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hpcxtal")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
