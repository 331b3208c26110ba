"""Running totals, heartbeat counters and recent errors of one daemon."""

from __future__ import annotations

import time
from collections import deque

from omsd.telemetry.heartbeat import Counters

RECENT_ERRORS = 50
RECENT_FILES = 20


class Stats:
    """What the daemon has done since it started (for status) and since the last heartbeat."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.totals = {"messages_read": 0, "bytes_read": 0, "files_completed": 0, "bytes_completed": 0,
                       "files_failed": 0, "messages_produced": 0, "bytes_produced": 0}
        self.recent_errors: list[dict] = []
        self.recent_files: deque[dict] = deque(maxlen=RECENT_FILES)

    def read(self, n_bytes: int) -> None:
        self.counters.add_read(n_bytes)
        self.totals["messages_read"] += 1
        self.totals["bytes_read"] += n_bytes

    def produced(self, n_bytes: int) -> None:
        self.counters.add_produced(n_bytes)
        self.totals["messages_produced"] += 1
        self.totals["bytes_produced"] += n_bytes

    def file_done(self, n_bytes: int) -> None:
        self.counters.add_processed(n_bytes)
        self.totals["files_completed"] += 1
        self.totals["bytes_completed"] += n_bytes

    def file_failed(self) -> None:
        self.totals["files_failed"] += 1

    def remember(self, path: str, topic: str, size: int, status: str, pipelines: list[str],
                 error: str | None) -> None:
        """Keep a finished file for the status page's "last files" (the last RECENT_FILES)."""
        self.recent_files.append({"time": time.time(), "path": path, "topic": topic, "size": size,
                                  "status": status, "pipelines": pipelines, "error": error})

    def error(self, message: str) -> None:
        self.recent_errors = (self.recent_errors + [{"time": time.time(), "message": message}])[-RECENT_ERRORS:]
