"""Heartbeats and the log topic of ``omsd upload --watch``, as OpenMSIStream's DataFileUploadDirectory sends them.

Heartbeat: key ``<program_id>_heartbeat``, value ``{"timestamp", "n_messages_produced",
"n_bytes_produced"}`` for the interval: the chunk messages the broker acknowledged,
bytes being their values' length (OpenMSIStream counts ``len(msg)``). A last one
goes out when the watcher stops. Log: key ``<program_id>_log``, value
``{"timestamp", "messages": [...]}`` with the interval's warnings and errors and the
watcher's own lines (file uploaded, file skipped). Both come from the config's
``heartbeat:``/``log:`` sections; OpenMSIStream's options (``--heartbeat_topic_name``
...) override them (:mod:`omsd.telemetry.options`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import structlog
from confluent_kafka import KafkaError, Producer

from omsd.config import HeartbeatConfig, LogTopicConfig
from omsd.telemetry.heartbeat import UPLOAD_COUNTER_KEYS, Counters, HeartbeatSchedule, heartbeat_message
from omsd.telemetry.logtopic import LogTopicHandler, log_message

log = structlog.get_logger(__name__)

# The watcher's own lines reach the log topic through this logger only (they are printed already).
REPORT_LOGGER = "omsd.upload.report"


class UploadTelemetry:
    """Sends the uploader's heartbeats and log messages through its producer."""

    def __init__(self, producer: Producer, counters: Counters, heartbeat: HeartbeatConfig | None,
                 log_cfg: LogTopicConfig | None,
                 encrypt: Callable[[str, str, bytes], tuple[bytes | None, bytes]] | None = None) -> None:
        self.producer = producer
        self.encrypt = encrypt  # encrypted topics: heartbeats and logs follow the uploads' encryption
        self.counters = counters
        self.heartbeat = heartbeat
        self.log_cfg = log_cfg
        self.heartbeat_schedule = HeartbeatSchedule(heartbeat.interval_secs) if heartbeat else None
        self.log_schedule = HeartbeatSchedule(log_cfg.interval_secs) if log_cfg else None
        self.handler = LogTopicHandler(log_cfg.level) if log_cfg else None
        self.report_logger = logging.getLogger(REPORT_LOGGER)
        self.report_logger.propagate = False
        self.report_logger.setLevel(logging.DEBUG)
        self.failed_deliveries = 0
        if self.handler is not None:
            self.handler.install()  # warnings and errors of the whole process
            self.report_logger.addHandler(self.handler)

    def report(self, level: int, message: str) -> None:
        """One of the watcher's printed lines, for the log topic."""
        if self.handler is not None:
            self.report_logger.log(level, message)

    def tick(self, now: float) -> None:
        """Send what is due (call from the producing thread's loop)."""
        if self.heartbeat_schedule is not None and self.heartbeat_schedule.due(now):
            self._send_heartbeat()
        if self.log_schedule is not None and self.log_schedule.due(now):
            self._send_logs()

    def close(self) -> None:
        """A last heartbeat and the remaining log lines, before the producer is flushed."""
        if self.heartbeat is not None:
            self._send_heartbeat()
        self._send_logs()
        if self.handler is not None:
            self.handler.remove()
            self.report_logger.removeHandler(self.handler)

    def _send_heartbeat(self) -> None:
        assert self.heartbeat is not None
        key, value = heartbeat_message(self.heartbeat.program_id, self.counters.snapshot_and_reset(),
                                       keys=UPLOAD_COUNTER_KEYS)
        self._produce(self.heartbeat.topic, key, value)

    def _send_logs(self) -> None:
        if self.handler is None or self.log_cfg is None:
            return
        messages = self.handler.drain()
        if messages:
            key, value = log_message(self.log_cfg.program_id, messages)
            self._produce(self.log_cfg.topic, key, value)

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        try:
            raw_key, raw_value = self.encrypt(topic, key, value) if self.encrypt is not None else (key.encode(), value)
            self.producer.produce(topic, key=raw_key, value=raw_value, on_delivery=self._delivered)
        except Exception as exc:  # noqa: BLE001 - telemetry must never stop the uploads
            self.failed_deliveries += 1
            log.warning("cannot send a telemetry message", topic=topic, error=str(exc))

    def _delivered(self, err: KafkaError | None, msg) -> None:
        if err is not None:
            self.failed_deliveries += 1
            if self.failed_deliveries in (1, 10, 100) or self.failed_deliveries % 1000 == 0:
                log.warning("telemetry message not delivered", topic=msg.topic(), error=err.str(),
                            failures=self.failed_deliveries)
