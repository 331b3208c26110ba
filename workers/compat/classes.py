"""The OpenMSIStream-compatible base classes: Runnable, processors, reproducers, S3 transfer."""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

if TYPE_CHECKING:
    from omsd.config import Config

from workers.compat.arguments import (
    DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_N_THREADS, DEFAULT_TOPIC_NAME, STEP_KIND, CompatArgumentParser,
)
from workers.compat.messages import CompatLogger, MetadataJSONMessage
from workers.compat.settings import _anchored, class_spec, load_compat_config, s3_settings
from workers.steps.compat_step import PROCESS_LOCK

log = structlog.get_logger(__name__)


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
