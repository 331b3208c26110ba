"""Command-line arguments of the OpenMSIStream-style programs, as OpenMSIStream registers them."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

DEFAULT_TOPIC_NAME = "test"
DEFAULT_N_THREADS = 2
DEFAULT_HEARTBEAT_INTERVAL_S = 15 * 60
DEFAULT_UPDATE_SECS = 300
STEP_KIND = "openmsistream"


# -- command-line arguments -----------------------------------------------------------------------
def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def _config_path(value: str) -> Path:
    path = Path(value)
    if not path.is_file() and "." not in path.name and path.with_suffix(".config").is_file():
        path = path.with_suffix(".config")  # OpenMSIStream adds the extension to bare names
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"config file {value} does not exist")
    return path.resolve()


def _directory(value: str) -> Path:
    path = Path(value).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log_level(value: str | int) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown log level {value!r}")
    return level


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regular expression {value!r}: {exc}") from None


def _opt(**kwargs: Any) -> tuple[str, dict[str, Any]]:
    return ("optional", kwargs)


#: OpenMSIStream's argument names → ("positional"|"optional", add_argument kwargs).
ARGUMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "output_dir": ("positional", {"type": _directory, "help": "directory to put output in"}),
    "bucket_name": ("positional", {"help": "name of the S3 bucket files are transferred to"}),
    "config": _opt(default=None, type=_config_path, help="omsd YAML or OpenMSIStream INI config file"),
    "topic_name": _opt(default=DEFAULT_TOPIC_NAME, help="topic to consume from (and to produce to)"),
    "consumer_topic_name": _opt(default=DEFAULT_TOPIC_NAME, help="topic to consume from"),
    "producer_topic_name": _opt(default=DEFAULT_TOPIC_NAME, help="topic processing results go to"),
    "consumer_group_id": _opt(default="create_new", help="consumer group ID ('create_new': a fresh one)"),
    "n_threads": _opt(type=_positive_int, help="number of omsd worker processes"),
    "n_consumer_threads": _opt(default=DEFAULT_N_THREADS, type=_positive_int, help="worker processes"),
    "n_producer_threads": _opt(default=DEFAULT_N_THREADS, type=_positive_int, help="worker processes"),
    "download_regex": _opt(type=_regex, help="only files whose relative paths match this regex"),
    "mode": _opt(choices=["memory", "disk", "both"], default="memory",
                 help="'disk'/'both': files are written under the output directory first"),
    "optional_output_dir": _opt(type=_directory, help="directory for output, logs and state"),
    "update_seconds": _opt(default=DEFAULT_UPDATE_SECS, type=int, help="accepted; omsd has no console ticker"),
    "logger_stream_level": _opt(type=_log_level, default="info", help="log level"),
    "logger_file_level": _opt(type=_log_level, default="warning", help="accepted for compatibility"),
    "logger_file_path": _opt(type=Path, help="accepted for compatibility"),
    "treat_undecryptable_as_plaintext": _opt(action="store_true", help="accepted for compatibility"),
    "max_wait_per_decrypt": _opt(default=5.0, type=_positive_float, help="accepted for compatibility"),
    "max_initial_wait_per_decrypt": _opt(default=60.0, type=_positive_float, help="accepted for compatibility"),
    "heartbeat_topic_name": _opt(help="topic heartbeat messages go to"),
    "heartbeat_program_id": _opt(help="ID in the keys of heartbeat messages"),
    "heartbeat_interval_secs": _opt(default=DEFAULT_HEARTBEAT_INTERVAL_S, type=_positive_float,
                                    help="seconds between heartbeats"),
    "log_topic_name": _opt(help="topic log messages go to"),
    "log_program_id": _opt(help="accepted for compatibility"),
    "log_interval_secs": _opt(default=60.0, type=_positive_float, help="accepted for compatibility"),
}


class CompatArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that knows OpenMSIStream's argument names (``add_arguments``)."""

    ARGUMENTS = ARGUMENTS

    def add_arguments(self, *names: str, **defaults: Any) -> None:
        """Add the named arguments; keyword arguments also set their defaults."""
        for name in [*names, *defaults]:
            if name not in self.ARGUMENTS:
                raise ValueError(f"argument {name} is not recognized as an option")
            where, kwargs = self.ARGUMENTS[name]
            flag = name if where == "positional" else "--" + name.removeprefix("optional_")
            if any(flag in action.option_strings or action.dest == name for action in self._actions):
                continue
            kwargs = dict(kwargs)
            if name in defaults and defaults[name] is not None:
                kwargs["default"] = defaults[name]
            self.add_argument(flag, **kwargs)

    def parse_args(self, *args: Any, **kwargs: Any) -> argparse.Namespace:  # type: ignore[override]
        """``--topic_name`` also sets the consumer and producer topics left at their defaults."""
        ns = super().parse_args(*args, **kwargs)
        topic = getattr(ns, "topic_name", None)
        if topic is not None:
            for name in ("consumer_topic_name", "producer_topic_name"):
                if getattr(ns, name, None) in (None, DEFAULT_TOPIC_NAME):
                    setattr(ns, name, topic)
        return ns
