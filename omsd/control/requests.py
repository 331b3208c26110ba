"""Checking the arguments of control requests before the daemon acts on them.

Each function reads one command's arguments from the request object and
returns them in the form the daemon uses, or raises ``CommandError`` (an error
reply that names what is wrong; the daemon does nothing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from omsd.control.server import CommandError

MAX_STOP_TIMEOUT_S = 7 * 24 * 3600.0


def stop_timeout(request: dict[str, Any]) -> float | None:
    """``stop``'s optional ``timeout``: a positive number of seconds (the graceful-stop time)."""
    value = request.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CommandError(f"stop: timeout must be a positive number of seconds, got {value!r}")
    return float(min(value, MAX_STOP_TIMEOUT_S))


def retry_selection(request: dict[str, Any], failed: Iterable[dict[str, Any]]) -> set[str] | None:
    """``retry``'s files: None for ``all: true``, else the set of ``path``/``paths`` given.

    Every path must be a string naming a file that ``failed`` lists with its bytes kept.
    """
    everything = request.get("all", False)
    if not isinstance(everything, bool):
        raise CommandError(f"retry: all must be true or false, got {everything!r}")
    paths: list[Any] = []
    if "path" in request:
        paths.append(request["path"])
    if "paths" in request:
        if not isinstance(request["paths"], list):
            raise CommandError(f"retry: paths must be a list of strings, got {request['paths']!r}")
        paths.extend(request["paths"])
    if everything:
        if paths:
            raise CommandError("retry: give either paths or all=true, not both")
        return None
    if not paths:
        raise CommandError("retry needs a path (or paths) or all=true")
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in failed:
        rows.setdefault(row["path"], []).append(row)
    for path in paths:
        if not isinstance(path, str) or not path:
            raise CommandError(f"retry: a path must be a non-empty string, got {path!r}")
        if path not in rows:
            raise CommandError(f"retry: {path!r} is not a failed file (`omsctl failed` lists them)")
        if not any(row["kept"] for row in rows[path]):
            raise CommandError(f"retry: {path!r} cannot be retried here: its bytes were not kept "
                               "(a corrupt file is processed when its producer sends it again)")
    return set(paths)
