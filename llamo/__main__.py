"""`python -m llamo ...` is the same as the `llamo` console script."""

import sys

from llamo.cli import main

sys.exit(main())
