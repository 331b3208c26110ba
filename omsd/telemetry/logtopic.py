"""Warnings and errors to a Kafka topic, the way OpenMSIStream's log producer sends them.

A logging handler keeps the rendered lines (JSON) in a bounded ring buffer;
the supervisor drains it every ``interval_secs`` into one message with key
``<program_id>_log`` and value ``{"timestamp": <epoch seconds>, "messages": [...]}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque

import structlog

MAX_BUFFERED = 4096


class LogTopicHandler(logging.Handler):
    """Buffers log records at or above ``level`` as JSON lines."""

    def __init__(self, level: str = "warning", max_messages: int = MAX_BUFFERED) -> None:
        super().__init__(logging.getLevelName(level.upper()))
        self.buffer: deque[str] = deque(maxlen=max_messages)
        self.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                               structlog.processors.TimeStamper(fmt="iso", utc=True)],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.JSONRenderer(default=str)],
        ))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buffer.append(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def drain(self) -> list[str]:
        out = list(self.buffer)
        self.buffer.clear()
        return out

    def install(self) -> "LogTopicHandler":
        logging.getLogger().addHandler(self)
        return self

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)


def log_message(program_id: str, messages: list[str], now: float | None = None) -> tuple[str, bytes]:
    """Key and value of one log-topic message."""
    value = {"timestamp": time.time() if now is None else now, "messages": messages}
    return f"{program_id}_log", json.dumps(value).encode()
