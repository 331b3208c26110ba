"""The daemon's periodic progress line: what it did in the last interval, while work flows.

At the default log level the daemon says nothing per file (a line per file would cost small-file
throughput); instead, every ``every_s`` seconds in which something happened, one info line:

    progress: 120 files (45.2 MB) done in the last 10 s, 0 failed; 1200 files done in all; lag 0 messages

Per-file lines ("file done", and the workers' "file saved") are at debug level (``omsd run -v``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from omsd.telemetry.units import human_bytes

log = structlog.get_logger(__name__)

DEFAULT_EVERY_S = 10.0


def total_lag(intakes: Iterable[Any]) -> int | None:
    """Messages behind the partitions' ends over every consumer, from their last fetches (no broker request)."""
    lags = [lag for intake in intakes for lag in intake.lag(cached=True).values()]
    return sum(lags) if lags else None


class ProgressLog:
    """Logs one progress line per interval in which files were done, failed or messages were read."""

    def __init__(self, every_s: float = DEFAULT_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._since = clock()
        self._last: dict[str, int] = {}

    def tick(self, totals: Mapping[str, int], lag: Callable[[], int | None]) -> bool:
        """Log the line if the interval is over and anything moved; True when a line was logged.
        ``lag`` is asked only then (messages between the committed offsets and the partitions' ends)."""
        now = self.clock()
        if self.every_s <= 0 or now - self._since < self.every_s:
            return False
        elapsed, self._since = now - self._since, now
        delta = {key: int(value) - self._last.get(key, 0) for key, value in totals.items()}
        self._last = {key: int(value) for key, value in totals.items()}
        done, failed = delta.get("files_completed", 0), delta.get("files_failed", 0)
        if not (done or failed or delta.get("messages_read", 0)):
            return False
        nbytes = delta.get("bytes_completed", 0)
        behind = lag()
        lag_text = f"; lag {behind} messages" if behind is not None else ""
        log.info(f"progress: {done} files ({human_bytes(nbytes)}) done in the last {elapsed:.0f} s, {failed} failed; "
                 f"{totals.get('files_completed', 0)} files done in all{lag_text}",
                 files=done, bytes=nbytes, failed=failed, interval_s=round(elapsed, 1),
                 files_total=totals.get("files_completed", 0), failed_total=totals.get("files_failed", 0),
                 mb_per_s=round(nbytes / elapsed / 1e6, 2) if elapsed > 0 else None, lag=behind)
        return True
