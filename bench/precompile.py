"""Compile omsd's bytecode before a benchmark, as installing a package does.

OpenMSIStream is benchmarked as an installed package, whose modules pip compiled at install time.
omsd is benchmarked from this source tree (an editable install), where Python compiles each module
when it is first imported and, with ``PYTHONDONTWRITEBYTECODE`` set (as on some machines), compiles
it again in every process: about 60 ms more per supervisor and per worker start, which is no cost of
omsd's own. ``compile_sources`` writes the ``__pycache__`` files first (ignored by git); Python
reads them whatever that variable says.
"""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("omsd", "workers")


def compile_sources() -> None:
    """Write the bytecode of omsd's packages (quietly; up to date files are left as they are)."""
    for package in PACKAGES:
        compileall.compile_dir(str(REPO / package), quiet=1)
