"""`python -m studio.evaluate <what>` (see cli.py)."""

import sys

from studio.evaluate.cli import main

sys.exit(main())
