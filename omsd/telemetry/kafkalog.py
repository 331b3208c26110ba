"""librdkafka's logs, errors and statistics, told through omsd's structured logging.

Every Kafka client built by :mod:`omsd.kafka` hands its log lines (``logger``), its errors (``error_cb``)
and, for the clients polled all the time, its statistics (``stats_cb``) to one :class:`KafkaLog` per
process, so that nothing of librdkafka's reaches stderr raw:

- a broker that cannot be connected to is summarised: one warning once it has failed for
  ``REPORT_AFTER_S`` ("broker 127.0.0.1:1 unreachable (connection refused) for 10 s"), again every
  ``REPEAT_EVERY_S`` while it lasts, and one info line when it answers again;
- a subscribed topic that does not exist yet is said so once, at info level;
- other librdkafka lines keep their level and facility, at most ``LINES_PER_WINDOW`` per facility in
  ``WINDOW_S``, then one line counting what was left out;
- :attr:`KafkaLog.unreachable_since` tells the health check since when no broker could be reached. It
  clears as soon as a client's statistics show a connected broker, or the application reports an
  assignment, not only when the next message arrives.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("omsd.librdkafka")

REPORT_AFTER_S = 10.0  # a broker failing this long gets its first warning (shorter outages stay quiet)
REPEAT_EVERY_S = 60.0  # ... and another one this often while it lasts
WINDOW_S = 60.0
LINES_PER_WINDOW = 5  # other librdkafka lines per facility and window
STATS_INTERVAL_MS = 1000  # statistics of the clients polled all the time (a few kB of JSON each)

# "[thrd:HOST:PORT/bootstrap]: HOST:PORT/bootstrap: Connect to ipv4#HOST:PORT failed: Connection refused
#  (after 0ms in state CONNECT, 3 identical error(s) suppressed)" — the same text without the thread prefix
# comes through error_cb.
_THREAD = re.compile(r"^(?:\[thrd:[^\]]*\]: )?(?:GroupCoordinator(?:/\d+)?: )?")
_BROKER = re.compile(r"^(?P<broker>\S+?:\d+)(?:/\S*?)?: (?P<what>.+)$")
_AFTER = re.compile(r"\s*\(after \d+ms in state (?P<state>\w+)[^)]*\)\s*$")
_TOPIC_MISSING = re.compile(r"topic not available: (?P<topic>[^:\s]+)")
_CONNECT_STATES = {"CONNECT", "SSL_HANDSHAKE", "AUTH_LEGACY", "AUTH_HANDSHAKE", "AUTH_REQ", "APIVERSION_QUERY",
                   "TRY_CONNECT", "INIT"}


def broker_name(address: str) -> str:
    """``SSL://host:9093`` and ``host:9093`` name the same broker."""
    return re.sub(r"^\w+://", "", address.strip()).lower()


def connect_failure(text: str) -> tuple[str, str] | None:
    """``(broker, reason)`` when ``text`` reports a failed attempt to connect to a broker, else None.

    A connection that was up and then closed ("Disconnected ... in state UP") is not a failure to
    connect: librdkafka reconnects by itself, and only a failed reconnection counts.
    """
    match = _BROKER.match(_THREAD.sub("", text.strip()))
    if match is None:
        return None
    what = match.group("what")
    after = _AFTER.search(what)
    state = after.group("state") if after else None
    what = _AFTER.sub("", what)
    low = what.lower()
    if "connection refused" in low:
        reason = "connection refused"
    elif "resolve" in low:
        reason = "host name not resolved"
    elif "timed out" in low and (state is None or state in _CONNECT_STATES):
        reason = "connection timed out"
    elif "connect to" in low or (state in _CONNECT_STATES and state != "INIT"):
        reason = what.rpartition("failed: ")[2] or what
    else:
        return None
    return broker_name(match.group("broker")), reason


@dataclass
class _Broker:
    """What is known of one broker address (all clients of the process together)."""

    failing_since: float | None = None
    reason: str = ""
    failures: int = 0
    reported_at: float | None = None  # when its last "unreachable" warning was logged


class KafkaLog:
    """Receives librdkafka's logs, errors and statistics for every client of this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.brokers: dict[str, _Broker] = {}
        self._all_down_since: float | None = None
        self._windows: dict[str, tuple[float, int, int]] = {}  # facility -> (window start, lines, left out)
        self._missing_topics: set[str] = set()
        self._lock = threading.Lock()

    # -- what the clients are given ----------------------------------------------------------------
    def client_settings(self, *, polled: bool, on_error: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """confluent-kafka settings for one client.

        ``polled``: the client is polled all the time. With a Python logger, error callback or statistics,
        librdkafka queues its log lines, errors and statistics until the next poll, so only such clients get
        them (and speak for the brokers); the others (the handover topic's reader and writer, admin clients),
        polled now and then, are kept silent instead (``log_level`` 0: nothing on stderr, nothing queued);
        their failures show as exceptions or undelivered records. ``on_error`` also receives the errors.
        """
        if not polled:
            return {"log_level": 0} if on_error is None else {"log_level": 0, "error_cb": on_error}
        error_cb = self.error
        if on_error is not None:
            def error_cb(err: Any) -> None:
                self.error(err)
                on_error(err)
        return {"logger": self, "error_cb": error_cb, "stats_cb": self.stats,
                "statistics.interval.ms": STATS_INTERVAL_MS}

    # -- confluent-kafka's callbacks ---------------------------------------------------------------
    def log(self, level: int, fmt: str, *args: Any) -> None:
        """confluent-kafka's ``logger`` interface: ``log(level, "%s [%s] %s", facility, client, text)``."""
        if len(args) == 3:
            facility, client, text = (str(a) for a in args)
        else:
            facility, client, text = "", "", (fmt % args if args else fmt)
        failure = connect_failure(text)
        if failure is not None:
            self._failed(*failure)
            return
        if facility == "FAIL" and "Disconnected" in text:
            level = logging.DEBUG  # an idle or restarted connection; a failed reconnection is what counts
        self._limited(level, str(facility), _THREAD.sub("", text), client=str(client))

    def error(self, err: Any) -> None:
        """``error_cb``: connection errors feed the broker summary; others are logged (rate-limited)."""
        from confluent_kafka import KafkaError

        code = err.code()
        if code in (KafkaError._TRANSPORT, KafkaError._RESOLVE):
            failure = connect_failure(err.str())
            if failure is not None:
                self._failed(*failure)
        elif code == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                if self._all_down_since is None:
                    self._all_down_since = self.clock()
        else:
            self._limited(logging.WARNING, f"error:{err.name()}", err.str(), code=err.name())

    def stats(self, stats_json: str) -> None:
        """``stats_cb``: a broker in state UP is reachable again."""
        try:
            brokers = json.loads(stats_json).get("brokers", {})
        except (ValueError, AttributeError):
            return
        for info in brokers.values():
            if isinstance(info, dict) and info.get("state") == "UP" and info.get("nodename"):
                self._up(broker_name(str(info["nodename"])))

    # -- what the application tells -----------------------------------------------------------------
    def connected(self) -> None:
        """The cluster answered (partitions were assigned, a message arrived): every broker counts as up."""
        with self._lock:
            known = list(self.brokers)
        for broker in known:
            self._up(broker)
        with self._lock:
            self._all_down_since = None

    def consumer_error(self, group: str, err: Any) -> None:
        """A consumer's error message (``msg.error()``): a topic that does not exist yet is said so, once."""
        from confluent_kafka import KafkaError

        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            return
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            found = _TOPIC_MISSING.search(err.str())
            topic = found.group("topic") if found else "?"
            if topic not in self._missing_topics:
                self._missing_topics.add(topic)
                log.info(f"topic {topic} does not exist yet; waiting for it (it appears when first written to)",
                         group=group, topic=topic)
            return
        self._limited(logging.WARNING, f"consumer:{err.name()}", f"consumer error: {err.str()}", group=group)

    # -- questions ----------------------------------------------------------------------------------
    @property
    def unreachable_since(self) -> float | None:
        """Since when (monotonic) no known broker could be reached, or None while one can."""
        with self._lock:
            failing = [b.failing_since for b in self.brokers.values()]
            if failing and all(since is not None for since in failing):
                return min(failing)  # type: ignore[type-var]
            if not failing:
                return self._all_down_since
            return None

    def refused(self, brokers: list[str], min_failures: int) -> bool:
        """True when each of ``brokers`` refused the connection at least ``min_failures`` times in a row."""
        with self._lock:
            found = [self.brokers.get(broker_name(b)) for b in brokers]
        return bool(found) and all(b is not None and b.failing_since is not None and b.reason == "connection refused"
                                   and b.failures >= min_failures for b in found)

    def last_failure(self) -> str | None:
        """The most recent failure as one phrase ("127.0.0.1:1: connection refused"), if any broker is failing."""
        with self._lock:
            failing = [(b.failing_since, name, b.reason) for name, b in self.brokers.items() if b.failing_since]
        return f"{max(failing)[1]}: {max(failing)[2]}" if failing else None

    def tick(self) -> None:
        """Log the warnings that are due (called now and then; every event calls it too)."""
        now = self.clock()
        due = []
        with self._lock:
            for name, broker in self.brokers.items():
                if broker.failing_since is None or now - broker.failing_since < REPORT_AFTER_S:
                    continue
                if broker.reported_at is None or now - broker.reported_at >= REPEAT_EVERY_S:
                    broker.reported_at = now
                    due.append((name, broker.reason, now - broker.failing_since, broker.failures))
        for name, reason, down_s, failures in due:
            log.warning(f"broker {name} unreachable ({reason}) for {down_s:.0f} s", broker=name, reason=reason,
                        down_s=round(down_s), attempts=failures)

    # -- internals ------------------------------------------------------------------------------------
    def _failed(self, broker: str, reason: str) -> None:
        with self._lock:
            state = self.brokers.setdefault(broker, _Broker())
            if state.failing_since is None:
                state.failing_since = self.clock()
                state.failures = 0
                state.reported_at = None
            state.reason = reason
            state.failures += 1
        self.tick()

    def _up(self, broker: str) -> None:
        with self._lock:
            state = self.brokers.setdefault(broker, _Broker())
            if state.failing_since is None:
                return
            down_s = self.clock() - state.failing_since
            reported = state.reported_at is not None
            state.failing_since, state.reported_at, state.failures = None, None, 0
            self._all_down_since = None
        (log.info if reported else log.debug)(f"broker {broker} reachable again after {down_s:.0f} s",
                                              broker=broker, down_s=round(down_s))

    def _limited(self, level: int, key: str, text: str, **fields: Any) -> None:
        """Log one librdkafka line, at most LINES_PER_WINDOW per ``key`` in each WINDOW_S."""
        now = self.clock()
        with self._lock:
            start, lines, left_out = self._windows.get(key, (now, 0, 0))
            summary = None
            if now - start >= WINDOW_S:
                if left_out:
                    summary = left_out
                start, lines, left_out = now, 0, 0
            if lines < LINES_PER_WINDOW:
                lines += 1
                emit = True
            else:
                left_out += 1
                emit = False
            self._windows[key] = (start, lines, left_out)
        if summary:
            log.log(level, f"{summary} more librdkafka lines like the next one were left out in the last "
                           f"{WINDOW_S:.0f} s", facility=key)
        if emit:
            log.log(level, text, facility=key, **fields)
