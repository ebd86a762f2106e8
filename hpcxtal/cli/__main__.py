"""``python -m hpcxtal.cli``."""
import sys

from hpcxtal.cli import main

sys.exit(main())
