"""The project metadata stays in the form current setuptools reads without deprecation warnings."""

from __future__ import annotations

import re
import tomllib

from tests.chunks import REPO


def test_license_is_an_spdx_string_and_setuptools_is_new_enough_for_it() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["license"] == "BSD-3-Clause"  # the {text = ...} table is deprecated
    requires = " ".join(meta["build-system"]["requires"])
    found = re.search(r"setuptools>=(\d+)", requires)
    assert found and int(found.group(1)) >= 77, requires  # SPDX strings need setuptools 77
