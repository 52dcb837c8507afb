"""``python -m specdec``: the command-line generator (see :mod:`specdec.cli`)."""
import sys

from .cli import main

sys.exit(main())
