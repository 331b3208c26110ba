"""OpenMSIStream-compatible base classes, run on omsd's supervisor and worker pool.

A subclass written for OpenMSIStream runs unchanged except for its import
line::

    from workers.compat import DataFileStreamProcessor   # was: from openmsistream import ...

The hooks keep their names and contracts:

- ``DataFileStreamProcessor._process_downloaded_data_file(datafile, lock)``
  returns None on success or a caught Exception (raising fails too);
- ``DataFileStreamReproducer._get_processing_result_message_for_file(datafile, lock)``
  returns a :class:`ReproducerMessage` (or bytes, str, dict), or None when
  the result could not be computed — a failure, as in OpenMSIStream;
- ``MetadataJSONReproducer._get_metadata_dict_for_file(datafile)`` returns a
  dict, sent as ``json.dumps``.

``run_from_command_line``, ``get_argument_parser``,
``get_command_line_arguments`` and ``get_init_args_kwargs`` accept the
arguments OpenMSIStream registers for each class. Constructing an instance
is cheap and never touches Kafka: the arguments it was built with are
recorded, and each worker process builds its own instance from them (once)
for the ``openmsistream`` pipeline step. ``process_files_as_read()`` (and its
reproducer and S3 equivalents) runs the omsd supervisor with one pipeline
whose only step is that class; it returns after a graceful stop (SIGTERM,
SIGINT, ``omsctl stop``); the counts it returns are zeros (omsd reports its
counts through ``omsctl status``, heartbeats and metrics). Like
OpenMSIStream, such a program keeps its state (registry, control socket
``omsd.sock``) in ``<output_dir>/LOGS``; a non-zero daemon exit (78 for a
configuration error) becomes the program's exit status.

Importing this module never imports confluent_kafka (workers import it).
"""

from __future__ import annotations

import argparse
import configparser
import json
import logging
import os
import pickle
import re
import sys
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

if TYPE_CHECKING:
    from omsd.config import Config

log = structlog.get_logger(__name__)

#: The lock handed to every hook in this process (threads of one worker share it).
PROCESS_LOCK = threading.Lock()

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


# -- logging as OpenMSIStream's logger offers it ------------------------------------------------
class CompatLogger:
    """``self.logger`` of OpenMSIStream classes: debug/info/warning/error on structlog."""

    def __init__(self, name: str) -> None:
        self._log = structlog.get_logger(name)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log.debug(str(msg))

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log.info(str(msg))

    def warning(self, msg: Any, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        self._log.warning(str(msg), exc_info=exc_info)

    def error(self, msg: Any, *args: Any, exc_info: Any = None, exc_type: type[BaseException] | None = None,
              exc_obj: BaseException | None = None, reraise: bool = False, **kwargs: Any) -> None:
        """Log; with ``exc_type`` raise ``exc_type(msg)``, with ``reraise`` re-raise ``exc_obj``."""
        self._log.error(str(msg), exc_info=exc_info or exc_obj)
        if exc_type is not None:
            raise exc_type(msg)
        if reraise and exc_obj is not None:
            raise exc_obj


# -- processing-result messages -------------------------------------------------------------------
class ReproducerMessage(ABC):
    """A message computed from a file; subclasses define ``msg_value``.

    ``msg_key`` is OpenMSIStream's processing-result key for the file.
    """

    def __init__(self, datafile: Any, *args: Any, **kwargs: Any) -> None:
        self._datafile = datafile

    @property
    def msg_key(self) -> str:
        from workers.steps.base import result_key

        return result_key(self._datafile.subdir_str, self._datafile.filename)

    @property
    @abstractmethod
    def msg_value(self) -> Any:
        """bytes, str or a dict (sent as JSON)."""

    @property
    def callback_kwargs(self) -> dict[str, Any]:
        return {"filename": self._datafile.filename, "rel_filepath": self._datafile.relative_filepath}

    def get_log_msg(self, print_every: Any = None) -> str | None:
        return None


class MetadataJSONMessage(ReproducerMessage):
    """A metadata dict, sent as ``json.dumps``."""

    def __init__(self, *args: Any, json_content: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_content = json_content

    @property
    def msg_value(self) -> str:
        if self.json_content is None:
            raise ValueError(f"JSON content should not be None for a {type(self).__name__}")
        return json.dumps(self.json_content)


# -- configuration ----------------------------------------------------------------------------------
def _is_ini(path: Path, text: str) -> bool:
    return path.suffix in (".ini", ".config", ".cfg") or text.lstrip().startswith("[")


def _expand_ini_value(value: str, where: str) -> str:
    if not value.startswith("$"):
        return value
    name = value[1:].strip("{}")
    if name not in os.environ:
        raise ValueError(f"{where}: environment variable {name} is not set")
    return os.environ[name]


def s3_settings(config_path: str | os.PathLike[str] | None) -> dict[str, str]:
    """The ``[s3]`` section of an OpenMSIStream INI file (``$VAR`` values expanded); {} if none."""
    if config_path is None:
        return {}
    path = Path(config_path)
    text = path.read_text(encoding="utf-8")
    if not _is_ini(path, text):
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text, source=str(path))
    if not parser.has_section("s3"):
        return {}
    return {key: _expand_ini_value(value, f"{path}[s3] {key}") for key, value in parser.items("s3")}


def load_compat_config(path: str | os.PathLike[str]) -> Config:
    """An omsd config from YAML or OpenMSIStream INI; an INI ``[s3]`` section is left to the S3 class."""
    from omsd.config import ConfigError, _from_ini, load_config

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    if not _is_ini(path, text):
        return load_config(path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not parser.has_section("s3"):
        return load_config(path)
    parser.remove_section("s3")
    lines = []
    for section in parser.sections():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in parser.items(section)]
    return _from_ini("\n".join(lines) + "\n", path)


def class_spec(cls: type) -> str:
    """``module:QualName`` of ``cls``, importable in a spawned worker.

    A class defined in a program run as ``python -m pkg.mod`` (or as a
    script) lives in ``__main__``; its real module name is recovered from the
    module's spec (or the script's file name).
    """
    module_name = cls.__module__
    if module_name in ("__main__", "__mp_main__"):
        main = sys.modules[module_name]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name and spec.name not in ("__main__", "__mp_main__"):
            module_name = spec.name
        else:
            filename = getattr(main, "__file__", None)
            if not filename:
                raise ValueError(f"{cls.__qualname__} is defined in an interactive session; "
                                 "define it in a module workers can import")
            script = Path(filename).resolve()
            if str(script.parent) not in [str(Path(p or ".").resolve()) for p in sys.path]:
                sys.path.insert(0, str(script.parent))  # spawned workers inherit sys.path
            module_name = script.stem
    return f"{module_name}:{cls.__qualname__}"


def _anchored(regex: Any) -> str | None:
    """OpenMSIStream matches ``filepath_regex`` at the start of the path (``re.match``)."""
    if regex is None:
        return None
    pattern = regex.pattern if isinstance(regex, re.Pattern) else str(regex)
    flags = re.match(r"^\(\?[aiLmsux]+\)", pattern)
    head = flags.group(0) if flags else ""
    return rf"{head}\A(?:{pattern[len(head):]})"


# -- the base classes -------------------------------------------------------------------------------
class Runnable(ABC):
    """OpenMSIStream's Runnable workflow: an argument parser and ``run_from_command_line``."""

    ARGUMENT_PARSER_TYPE: ClassVar[type[CompatArgumentParser]] = CompatArgumentParser

    @classmethod
    def get_argument_parser(cls, *args: Any, **kwargs: Any) -> CompatArgumentParser:
        """The parser with every argument of :meth:`get_command_line_arguments`."""
        parser = cls.ARGUMENT_PARSER_TYPE(*args, **kwargs)
        names, defaults = cls.get_command_line_arguments()
        parser.add_arguments(*names, **defaults)
        return parser

    @classmethod
    def get_command_line_arguments(cls) -> tuple[list[str], dict[str, Any]]:
        """(argument names, {argument name: default}) for the parser."""
        return [], {}

    @classmethod
    def get_init_args_kwargs(cls, parsed_args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
        """Constructor (args, kwargs) from parsed arguments."""
        return [], {}

    @classmethod
    @abstractmethod
    def run_from_command_line(cls, args: list[str] | None = None) -> None:
        """Run the class end to end from command-line arguments."""


class _DataFileStreamHandler(Runnable):
    """What the three stream classes share: their arguments, construction and the daemon run."""

    N_RECENT_FILES: ClassVar[int] = 50
    LOG_SUBDIR_NAME: ClassVar[str] = "LOGS"
    STEP_KIND: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _DataFileStreamHandler:
        instance = super().__new__(cls)
        instance._omsd_init = (args, kwargs)  # workers rebuild the instance from these
        return instance

    def __init__(self, config_file: Any = None, consumer_topic_name: str | None = None,
                 producer_topic_name: str | None = None, *, output_dir: Any = None, mode: str = "memory",
                 n_threads: int | None = None, n_consumer_threads: int | None = None,
                 n_producer_threads: int | None = None, consumer_group_id: str | None = "create_new",
                 filepath_regex: Any = None, heartbeat_topic_name: str | None = None,
                 heartbeat_program_id: str | None = None, heartbeat_interval_secs: float | None = None,
                 log_topic_name: str | None = None, update_secs: int | None = None, datafile_type: Any = None,
                 **ignored: Any) -> None:
        if mode not in ("memory", "disk", "both"):
            raise ValueError(f"unrecognized mode argument {mode!r}")
        self.config_file = Path(config_file) if config_file is not None else None
        self.consumer_topic_name = consumer_topic_name or DEFAULT_TOPIC_NAME
        self.producer_topic_name = producer_topic_name
        self.mode = mode
        threads = [n for n in (n_threads, n_consumer_threads, n_producer_threads) if n]
        self.n_threads = max(threads) if threads else DEFAULT_N_THREADS
        self.consumer_group_id = consumer_group_id or "create_new"
        self.filepath_regex = filepath_regex
        self.heartbeat_topic_name = heartbeat_topic_name
        self.heartbeat_program_id = heartbeat_program_id
        self.heartbeat_interval_secs = heartbeat_interval_secs
        self.log_topic_name = log_topic_name
        self.update_secs = update_secs
        self._log_level = ignored.get("streamlevel") or logging.INFO
        self._output_dir = Path(output_dir) if output_dir is not None else self._get_auto_output_dir()
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self._logs_subdir = self._output_dir / self.LOG_SUBDIR_NAME
        self.logger = CompatLogger(type(self).__name__)
        self.lock = PROCESS_LOCK
        self.n_msgs_read = self.n_msgs_processed = self.n_processed_files = 0
        self.recent_processed_filepaths: list[str] = []

    # -- arguments, as OpenMSIStream registers them for these classes -------------------------------
    @classmethod
    def _get_auto_output_dir(cls) -> Path:
        return Path() / f"{cls.__name__}_output"

    @classmethod
    def get_command_line_arguments(cls) -> tuple[list[str], dict[str, Any]]:
        names = ["logger_stream_level", "logger_file_path", "logger_file_level", "config", "topic_name",
                 "consumer_topic_name", "consumer_group_id", "producer_topic_name",
                 "treat_undecryptable_as_plaintext", "max_wait_per_decrypt", "max_initial_wait_per_decrypt",
                 "update_seconds", "heartbeat_topic_name", "heartbeat_program_id", "heartbeat_interval_secs",
                 "log_topic_name", "log_program_id", "log_interval_secs", "download_regex", "mode"]
        return names, {"optional_output_dir": cls._get_auto_output_dir()}

    @classmethod
    def get_init_args_kwargs(cls, parsed_args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
        def arg(name: str, default: Any = None) -> Any:
            return getattr(parsed_args, name, default)

        kwargs = {
            "streamlevel": arg("logger_stream_level"), "logger_file": arg("logger_file_path"),
            "filelevel": arg("logger_file_level"), "consumer_group_id": arg("consumer_group_id", "create_new"),
            "update_secs": arg("update_seconds"), "heartbeat_topic_name": arg("heartbeat_topic_name"),
            "heartbeat_program_id": arg("heartbeat_program_id"),
            "heartbeat_interval_secs": arg("heartbeat_interval_secs"), "log_topic_name": arg("log_topic_name"),
            "filepath_regex": arg("download_regex"), "mode": arg("mode", "memory"),
            "output_dir": arg("output_dir"),
        }
        return [arg("config"), arg("consumer_topic_name") or arg("topic_name")], kwargs

    @classmethod
    def run_from_command_line(cls, args: list[str] | None = None) -> None:
        """Parse ``args`` (default ``sys.argv[1:]``), build the instance, run until stopped."""
        parser = cls.get_argument_parser()
        parsed = parser.parse_args(args=args)
        init_args, init_kwargs = cls.get_init_args_kwargs(parsed)
        handler = cls(*init_args, **init_kwargs)
        handler._run_stream()
        handler.close()

    # -- running ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to release: the daemon closes its clients when it stops."""

    def _step_options(self) -> dict[str, Any]:
        args, kwargs = self._omsd_init
        options: dict[str, Any] = {"class": class_spec(type(self)), "kind": self.STEP_KIND, "mode": self.mode,
                                   "args": list(args), "kwargs": dict(kwargs)}
        if self.STEP_KIND != "processor":
            options["topic"] = self.producer_topic_name
        if self.mode != "memory":
            options["dir"] = str(self._output_dir.resolve())
        return options

    def _group_id(self) -> str:
        if self.consumer_group_id.lower() == "create_new":
            return f"omsd-{type(self).__name__}-{uuid.uuid4().hex[:12]}"
        return self.consumer_group_id

    def omsd_config(self) -> Config:
        """The omsd configuration this instance runs with: one pipeline whose step is this class."""
        from dataclasses import replace

        from omsd.config import ConfigError, HeartbeatConfig, PipelineConfig
        from workers.pipeline import validate_pipeline

        if self.config_file is None:
            raise ConfigError("no config file given (--config)")
        config = load_compat_config(self.config_file)
        try:
            step = (STEP_KIND, self._step_options())
            pickle.dumps(step)  # the step's options travel to spawned workers
        except (ValueError, pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{type(self).__name__} cannot run in omsd workers: {exc}") from None
        pipeline = PipelineConfig(name=type(self).__name__, topic=self.consumer_topic_name, steps=[step],
                                  match=_anchored(self.filepath_regex), group_id=self._group_id())
        errors = validate_pipeline(pipeline.name, pipeline.topic, pipeline.steps)
        if errors:
            raise ConfigError(f"{self.config_file}: {errors[0]}")
        state_dir = self._logs_subdir.resolve()
        changes: dict[str, Any] = {"pipelines": [pipeline], "workers": self.n_threads, "state_dir": state_dir,
                                   "control_socket": state_dir / "omsd.sock"}
        if self.heartbeat_topic_name:
            changes["heartbeat"] = HeartbeatConfig(
                topic=self.heartbeat_topic_name,
                interval_secs=float(self.heartbeat_interval_secs or DEFAULT_HEARTBEAT_INTERVAL_S),
                program_id=self.heartbeat_program_id or type(self).__name__)
        if self.log_topic_name:
            changes["log_topic"] = self.log_topic_name
        return replace(config, **changes)

    def _run_stream(self) -> None:
        """Run the daemon until it stops; a non-zero exit becomes SystemExit with omsd's exit code.

        omsd keeps its counts in ``omsctl status``, its heartbeats and its
        metrics; the counts OpenMSIStream's run methods return stay 0 here.
        """
        from omsd import exitcodes
        from omsd.config import ConfigError
        from omsd.daemon import serve
        from omsd.logging import configure_logging

        configure_logging(level=self._log_level, process="supervisor")
        try:
            config = self.omsd_config()
        except ConfigError as exc:
            print(f"{type(self).__name__}: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(exitcodes.RET_CONFIG) from None
        code = serve(config)
        if code != exitcodes.RET_OK:
            raise SystemExit(code)


class DataFileStreamProcessor(_DataFileStreamHandler):
    """Runs ``_process_downloaded_data_file`` on every file reconstructed from a topic."""

    STEP_KIND = "processor"

    def __init__(self, config_file: Any = None, topic_name: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("producer_topic_name", None)
        kwargs.pop("consumer_topic_name", None)
        super().__init__(config_file, topic_name, None, **kwargs)

    @abstractmethod
    def _process_downloaded_data_file(self, datafile: Any, lock: threading.Lock) -> BaseException | None:
        """Process one file; return None on success or a caught Exception."""

    def _failed_processing_callback(self, datafile: Any, lock: threading.Lock) -> None:
        """Kept for subclasses that call it; omsd records failures itself."""

    def process_files_as_read(self) -> tuple[int, int, int, list[str]]:
        """Run until stopped; returns OpenMSIStream's count tuple (zeros: see ``omsctl status``)."""
        self._run_stream()
        return self.n_msgs_read, self.n_msgs_processed, self.n_processed_files, self.recent_processed_filepaths

    @classmethod
    def get_command_line_arguments(cls) -> tuple[list[str], dict[str, Any]]:
        names, defaults = super().get_command_line_arguments()
        return [*names, "n_threads"], {**defaults, "n_threads": DEFAULT_N_THREADS}

    @classmethod
    def get_init_args_kwargs(cls, parsed_args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = super().get_init_args_kwargs(parsed_args)
        return args, {**kwargs, "n_threads": getattr(parsed_args, "n_threads", None)}


class DataFileStreamReproducer(_DataFileStreamHandler):
    """Produces the result of ``_get_processing_result_message_for_file`` for every file to a topic."""

    STEP_KIND = "reproducer"

    def __init__(self, config_file: Any = None, consumer_topic_name: str | None = None,
                 producer_topic_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(config_file, consumer_topic_name, producer_topic_name, **kwargs)

    @abstractmethod
    def _get_processing_result_message_for_file(self, datafile: Any, lock: threading.Lock) -> Any:
        """The message for one file (ReproducerMessage, bytes, str or dict); None when it failed."""

    def produce_processing_results_for_files_as_read(self) -> tuple[int, int, int, int, list[str]]:
        """Run until stopped; returns OpenMSIStream's count tuple (zeros: see ``omsctl status``)."""
        self._run_stream()
        return (self.n_msgs_read, self.n_msgs_processed, self.n_processed_files, self.n_processed_files,
                self.recent_processed_filepaths)

    @classmethod
    def get_command_line_arguments(cls) -> tuple[list[str], dict[str, Any]]:
        names, defaults = super().get_command_line_arguments()
        return [*names, "n_consumer_threads", "n_producer_threads"], defaults

    @classmethod
    def get_init_args_kwargs(cls, parsed_args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = super().get_init_args_kwargs(parsed_args)
        n_consumer = getattr(parsed_args, "n_consumer_threads", None) or DEFAULT_N_THREADS
        n_producer = getattr(parsed_args, "n_producer_threads", None) or DEFAULT_N_THREADS
        kwargs.update(n_consumer_threads=n_consumer, n_producer_threads=n_producer)
        return [*args, getattr(parsed_args, "producer_topic_name", None)], kwargs


class MetadataJSONReproducer(DataFileStreamReproducer):
    """Produces ``json.dumps(_get_metadata_dict_for_file(datafile))`` for every file."""

    STEP_KIND = "metadata"

    def _get_processing_result_message_for_file(self, datafile: Any, lock: threading.Lock) -> MetadataJSONMessage:
        content = self._get_metadata_dict_for_file(datafile)
        if not isinstance(content, dict):
            raise TypeError(f"metadata for {datafile.relative_filepath} is a {type(content).__name__}, not a dict")
        return MetadataJSONMessage(datafile, json_content=content)

    @abstractmethod
    def _get_metadata_dict_for_file(self, datafile: Any) -> dict:
        """The metadata of one file as a JSON-serialisable dict."""


class S3TransferStreamProcessor(DataFileStreamProcessor):
    """Transfers every file to ``<bucket>/<topic>/<subdir>/<filename>`` and verifies it there.

    S3 settings come from the config file's ``[s3]`` section as in
    OpenMSIStream (``access_key_id``, ``secret_key_id``, ``endpoint_url``,
    ``region``), else from boto3's usual chain.
    """

    def __init__(self, bucket_name: str, config_path: Any = None, consumer_topic_name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(config_path, consumer_topic_name, **kwargs)
        self.bucket_name = bucket_name
        self._s3_step: Any = None

    def _s3(self) -> Any:
        if self._s3_step is None:
            from workers.steps.s3 import S3Step

            s3 = s3_settings(self.config_file)
            options = {"bucket": self.bucket_name, "endpoint_url": s3.get("endpoint_url"),
                       "region": s3.get("region"), "aws_access_key_id": s3.get("access_key_id"),
                       "aws_secret_access_key": s3.get("secret_key_id")}
            self._s3_step = S3Step({k: v for k, v in options.items() if v}, pipeline=type(self).__name__,
                                   topic=self.consumer_topic_name)
        return self._s3_step

    def _process_downloaded_data_file(self, datafile: Any, lock: threading.Lock) -> BaseException | None:
        from workers.steps.base import StepContext

        try:
            self._s3().run(StepContext(datafile=datafile, pipeline=type(self).__name__,
                                       topic=self.consumer_topic_name))
        except Exception as exc:  # noqa: BLE001 - the seed-001 contract: return it
            self.logger.error(f"failed to transfer {datafile.relative_filepath} to the object store: {exc}")
            return exc
        return None

    def make_stream(self) -> tuple[int, int, int, list[str]]:
        """Run until stopped (OpenMSIStream's name for :meth:`process_files_as_read`)."""
        return self.process_files_as_read()

    @classmethod
    def get_command_line_arguments(cls) -> tuple[list[str], dict[str, Any]]:
        names, defaults = super().get_command_line_arguments()
        return [*names, "bucket_name"], defaults

    @classmethod
    def get_init_args_kwargs(cls, parsed_args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = super().get_init_args_kwargs(parsed_args)
        return [parsed_args.bucket_name, *args], kwargs


def handler_kind(cls: type) -> str | None:
    """"processor", "reproducer" or "metadata" for a compat class, else None."""
    if isinstance(cls, type) and issubclass(cls, _DataFileStreamHandler) and cls.STEP_KIND:
        return cls.STEP_KIND
    return None


__all__ = [
    "CompatArgumentParser", "DataFileStreamProcessor", "DataFileStreamReproducer", "MetadataJSONMessage",
    "MetadataJSONReproducer", "PROCESS_LOCK", "ReproducerMessage", "Runnable", "S3TransferStreamProcessor",
    "class_spec", "handler_kind", "load_compat_config", "s3_settings",
]

