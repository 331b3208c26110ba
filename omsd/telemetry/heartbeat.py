"""Heartbeat counters and messages, wire-compatible with OpenMSIStream.

OpenMSIStream's ``MessageReproducerHeartbeatProducible`` sends, as a UTF-8
string, the key ``<program_id>_heartbeat`` and the value
``json.dumps({"timestamp": <UTC ISO-8601>, "n_messages_read": ...})`` with
counters for the interval since the previous heartbeat. We send the same.
"""

from __future__ import annotations

import datetime
import json
import threading

COUNTER_KEYS = (
    "n_messages_read",
    "n_bytes_read",
    "n_messages_processed",
    "n_bytes_processed",
    "n_messages_produced",
    "n_bytes_produced",
)

# Key order of OpenMSIStream's reproducer heartbeat value.
_VALUE_ORDER = (
    "n_messages_read",
    "n_messages_processed",
    "n_messages_produced",
    "n_bytes_read",
    "n_bytes_processed",
    "n_bytes_produced",
)


class Counters:
    """Message and byte counts since the last heartbeat (safe across threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_KEYS, 0)

    def _add(self, kind: str, n_bytes: int) -> None:
        if n_bytes < 0:
            raise ValueError(f"negative byte count: {n_bytes}")
        with self._lock:
            self._values[f"n_messages_{kind}"] += 1
            self._values[f"n_bytes_{kind}"] += n_bytes

    def add_read(self, n_bytes: int) -> None:
        """Count one message of ``n_bytes`` read from Kafka."""
        self._add("read", n_bytes)

    def add_processed(self, n_bytes: int) -> None:
        """Count one message (chunk) of ``n_bytes`` processed."""
        self._add("processed", n_bytes)

    def add_produced(self, n_bytes: int) -> None:
        """Count one message of ``n_bytes`` produced (acknowledged)."""
        self._add("produced", n_bytes)

    def snapshot_and_reset(self) -> dict[str, int]:
        """Return the counts since the previous call and start again from zero."""
        with self._lock:
            snapshot = dict(self._values)
            self._values = dict.fromkeys(COUNTER_KEYS, 0)
        return snapshot


# OpenMSIStream's DataFileUploadDirectory heartbeat carries only what it produced.
UPLOAD_COUNTER_KEYS = ("n_messages_produced", "n_bytes_produced")


def heartbeat_message(
    program_id: str, counters: dict[str, int], now: datetime.datetime | None = None,
    keys: tuple[str, ...] = _VALUE_ORDER,
) -> tuple[str, bytes]:
    """Return ``(key, value)`` of one heartbeat message for ``program_id``.

    ``now`` defaults to the current time; a naive ``now`` is taken as UTC.
    ``keys`` are the counters sent (default: a reproducer's six; the
    uploader's are :data:`UPLOAD_COUNTER_KEYS`); missing ones are sent as 0.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=datetime.timezone.utc)
    else:
        now = now.astimezone(datetime.timezone.utc)
    value: dict[str, object] = {"timestamp": now.isoformat()}
    for key in keys:
        value[key] = int(counters.get(key, 0))
    return f"{program_id}_heartbeat", json.dumps(value).encode("utf-8")


class HeartbeatSchedule:
    """Decides when the next heartbeat is due; the first is due at once."""

    def __init__(self, interval_secs: float) -> None:
        if interval_secs <= 0:
            raise ValueError(f"heartbeat interval must be > 0, got {interval_secs}")
        self.interval_secs = float(interval_secs)
        self._next: float | None = None

    def due(self, now_monotonic: float) -> bool:
        """True when a heartbeat should be sent now; then schedules the next one."""
        if self._next is not None and now_monotonic < self._next:
            return False
        self._next = now_monotonic + self.interval_secs
        return True
