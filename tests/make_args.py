"""Make arguments for tests that run the Makefile: never its install step, also not in sub-makes.

``-o install`` only reaches the top-level make (GNU make does not pass ``-o`` on to sub-makes), so a recipe that
calls ``$(MAKE) stage-...`` would still find ``$(STAMP)`` older than pyproject.toml in a checkout without a
``.venv`` and install a whole environment. A command-line ``STAMP=`` reaches every sub-make: pointing it at a
freshly touched file makes the install step up to date everywhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

_STAMP = Path(tempfile.mkdtemp(prefix="llamo-make-")) / "installed.stamp"
_STAMP.touch()
#: put these after ``make`` in every test that runs the Makefile
NO_INSTALL: list[str] = ["-o", "install", f"STAMP={_STAMP}"]
