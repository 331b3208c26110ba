"""structlog set-up shared by the supervisor and the worker processes.

JSON lines on stderr when it is not a terminal (journald, files, pipes), a
coloured console renderer on a terminal. Standard-library loggers (librdkafka
wrappers, boto3, ...) go through the same renderer, filtered at the same level.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import structlog

_HANDLER_NAME = "omsd"
LEVEL_ENV = "OMSD_LOG_LEVEL"  # the default level; `omsd run --log-level` sets it for the workers too

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


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level LEVEL`` and ``-v`` (debug: a line per file) for the daemon's commands."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--log-level", dest="log_level", type=str.lower, choices=sorted(set(_LEVELS) - {"warn"}),
                       default=None, help=f"log level of the daemon and its workers (default: ${LEVEL_ENV} or info)")
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                       help="debug level: a line for every file done, from the supervisor and the workers")


def use_log_level(level: str | None) -> None:
    """Make ``level`` the default of this process and of the processes it starts (workers inherit it)."""
    if level:
        _level_number(level)  # refuse a bad one here, not in a worker
        os.environ[LEVEL_ENV] = level


def configure_logging(json: bool | None = None, level: str | int | None = None, **bound: Any) -> None:
    """Configure structlog and stdlib logging for this process.

    ``json``: True for JSON lines, False for the console renderer, None to
    choose by whether stderr is a TTY. ``level``: None takes ``$OMSD_LOG_LEVEL``,
    else info. ``bound`` fields (``process="supervisor"``, ``slot=3``) are added
    to every log line. Calling again replaces the set-up.

    Events below the level are dropped by the first processor, before any
    rendering, so a debug line per file costs next to nothing at info level.
    """
    if json is None:
        json = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    level_no = _level_number(level if level is not None else os.environ.get(LEVEL_ENV) or "info")

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
