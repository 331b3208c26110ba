"""structlog set-up shared by the supervisor and the worker processes.

JSON lines on stderr when it is not a terminal (journald, files, pipes), a
coloured console renderer on a terminal. Standard-library loggers (librdkafka
wrappers, boto3, ...) go through the same renderer, filtered at the same level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_HANDLER_NAME = "omsd"

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}") from None


def _bind_static(bound: dict[str, Any]):
    """A processor adding ``bound`` to every event (every thread, stdlib records too)."""

    def add_bound(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key, value in bound.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add_bound


def configure_logging(json: bool | None = None, level: str | int = "info", **bound: Any) -> None:
    """Configure structlog and stdlib logging for this process.

    ``json``: True for JSON lines, False for the console renderer, None to
    choose by whether stderr is a TTY. ``bound`` fields (``process="supervisor"``,
    ``slot=3``) are added to every log line. Calling again replaces the set-up.
    """
    if json is None:
        json = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    level_no = _level_number(level)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _bind_static(dict(bound)),
        structlog.processors.StackInfoRenderer(),
    ]
    if json:
        final = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        final = [structlog.dev.ConsoleRenderer()]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level_no)
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
