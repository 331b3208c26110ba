"""How omsd shows sizes, rates and durations to people: decimal units everywhere (1 MB = 1,000,000 bytes).

The upload's progress, ``omsctl status``, the daemon's progress line and the status page all use
these, so one number means the same everywhere. (Configuration sizes accept both ``512MB`` and
``512MiB``; that is input, and means what it says.)
"""

from __future__ import annotations

from typing import Any

MB = 1_000_000  # the megabyte people are shown and asked for (command-line sizes)
_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_bytes(n: Any) -> str:
    """``1536`` → ``"1.5 kB"``, ``2_500_000`` → ``"2.5 MB"``; non-numbers are shown as they are (None as -)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-" if n is None else str(n)
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_rate(bytes_per_s: Any) -> str:
    """``2_500_000`` → ``"2.5 MB/s"``."""
    return "-" if not isinstance(bytes_per_s, (int, float)) else f"{human_bytes(bytes_per_s)}/s"


def human_duration(seconds: Any) -> str:
    """``3723`` → ``"1h 02m 03s"``."""
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{seconds:.1f}s" if isinstance(seconds, float) and seconds < 10 else f"{s}s"
