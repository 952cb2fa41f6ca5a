"""`python -m analysis tables|plots|watch|status --results DIR ...` (see analysis.cli)."""

import sys

from .cli import main

sys.exit(main())
