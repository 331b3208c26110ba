"""Loading and validating omsd's configuration (YAML, or OpenMSIStream INI).

YAML scalars may use ``${VAR}`` and ``${VAR:-default}``; INI values that
start with ``$`` name an environment variable, as in OpenMSIStream. Errors
name the file and line and raise :class:`ConfigError` (exit code 78).

Pipeline steps are checked only through a validator the caller passes
(``omsd run`` passes :func:`workers.pipeline.validate_pipeline`, which imports
the users' step functions); without one, loading a config never imports user
code, so ``omsctl`` and ``omsd upload`` work where the pipelines' modules are
not installed.
"""

from __future__ import annotations

import configparser
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omsd.configtext import ConfigError, LineDict, LineLoader, expand_tree, parse_size
from omsd.crypto.settings import CryptoSettings, read_section as read_crypto

# OpenMSIStream INI values: $VAR or ${VAR}, expanded when the value starts with "$".
_INI_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# librdkafka rejects the serializer names OpenMSIStream keeps in its INI files.
_INI_IGNORED_KEYS = {"key.serializer", "value.serializer", "key.deserializer", "value.deserializer"}
# Where a partition's owner tells the next one what it finished above the committed offset (omsd.handover).
DEFAULT_HANDOVER_TOPIC = "omsd.handover"
DISPATCH_POLICIES = ("balanced", "sharded")  # the values of omsd.dispatch.queue.DispatchPolicy


#: Checks one pipeline's steps: ``(name, topic, steps) -> error messages`` (empty when valid).
StepValidator = Callable[[str, str, list[tuple[str, dict[str, Any]]]], list[str]]


@dataclass(frozen=True)
class StagingConfig:
    memory_bytes: int = 512 << 20
    max_file_bytes: int = 64 << 30
    expire_incomplete_secs: float = 3600.0
    # "on_mismatch": the workers' whole-file sha512 proves every byte; chunk hashes are checked only to
    # name the bad messages when it fails. "at_intake": every chunk is hashed on arrival as well, so a
    # corrupt chunk is rejected at once and a good copy of it can still complete the file.
    verify_chunk_hashes: str = "on_mismatch"


@dataclass(frozen=True)
class HeartbeatConfig:
    topic: str
    interval_secs: float = 30.0
    program_id: str = "omsd"


@dataclass(frozen=True)
class LogTopicConfig:
    """Warnings and errors sent to a Kafka topic, batched as OpenMSIStream's log producer does."""

    topic: str
    interval_secs: float = 30.0
    program_id: str = "omsd"
    level: str = "warning"


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    topic: str
    steps: list[tuple[str, dict[str, Any]]]
    match: str | None = None
    group_id: str | None = None
    retries: int = 2

    def matches(self, relative_path: str) -> bool:
        return self.match is None or re.search(self.match, relative_path) is not None


@dataclass
class Config:
    path: Path | None = None
    broker: dict[str, Any] = field(default_factory=dict)
    consumer: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    state_dir: Path = Path("var")
    control_socket: Path = Path("var/omsd.sock")
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    dispatch: str = "balanced"  # or "sharded" (see omsd.dispatch.queue; DISPATCH_POLICIES)
    staging: StagingConfig = field(default_factory=StagingConfig)
    heartbeat: HeartbeatConfig | None = None
    log: LogTopicConfig | None = None
    metrics_port: int | None = None
    shutdown_timeout_secs: float = 60.0
    retry_failed_after_secs: float = 600.0
    state_reserve_bytes: int = 64 << 20  # free space kept in state_dir for the registry: no spilling below it
    step_timeout_secs: float | None = 3600.0  # one step attempt's limit unless its timeout_secs says (None: none)
    handover_topic: str | None = DEFAULT_HANDOVER_TOPIC
    kafkacrypto: CryptoSettings | None = None  # encrypted topics (see omsd.crypto)
    pipelines: list[PipelineConfig] = field(default_factory=list)

    def group_for(self, pipeline: PipelineConfig) -> str:
        """The consumer group of a pipeline: its own, the config's, or ``omsd.<name>``."""
        return pipeline.group_id or self.consumer.get("group.id") or f"omsd.{pipeline.name}"


class _Reader:
    """Reads typed values from a parsed mapping, naming file and line in errors."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def where(self, node: Any, key: Any = None) -> str:
        line = 0
        if isinstance(node, LineDict):
            line = node.key_lines.get(key, node.line) if key is not None else node.line
        name = str(self.path) if self.path else "<config>"
        return f"{name}:{line}" if line else name

    def mapping(self, node: Any, key: str, allowed: set[str] | None = None) -> dict[str, Any]:
        value = node.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where(node, key)}: '{key}' must be a mapping")
        if allowed is not None:
            unknown = sorted(set(map(str, value)) - allowed)
            if unknown:
                raise ConfigError(f"{self.where(value, unknown[0])}: unknown key '{unknown[0]}' in '{key}' "
                                  f"(allowed: {', '.join(sorted(allowed))})")
        return value

    def number(self, node: Any, key: str, default: float, kind: type = float, minimum: float = 0) -> Any:
        if key not in node or node[key] is None:
            return default
        raw = node[key]
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.where(node, key)}: '{key}' must be a number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{self.where(node, key)}: '{key}' must be at least {minimum}")
        return value

    def string(self, node: Any, key: str, default: str | None = None, required: bool = False,
               choices: tuple[str, ...] = ()) -> str | None:
        raw = node.get(key, default)
        if raw is None:
            if required:
                raise ConfigError(f"{self.where(node)}: '{key}' is required")
            return None
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"{self.where(node, key)}: '{key}' must be a string")
        if choices and str(raw).lower() not in choices:  # one of a few words, in any case
            raise ConfigError(f"{self.where(node, key)}: '{key}' must be {', '.join(choices[:-1])} or {choices[-1]}")
        return str(raw).lower() if choices else str(raw)


_TOP_KEYS = {"broker", "consumer", "producer", "state_dir", "control_socket", "workers", "dispatch", "staging",
             "heartbeat", "log", "metrics", "pipelines", "shutdown_timeout_secs",
             "retry_failed_after_secs", "handover_topic", "state_reserve_bytes", "kafkacrypto", "step_timeout_secs"}
_PIPELINE_KEYS = {"name", "topic", "match", "group.id", "group_id", "steps", "retries"}


def _stringify(props: dict[str, Any]) -> dict[str, Any]:
    """librdkafka properties keep their YAML types except nested structures."""
    return {str(k): v for k, v in props.items()}


def _read_pipeline(reader: _Reader, node: Any, index: int, validate_steps: StepValidator | None) -> PipelineConfig:
    if not isinstance(node, dict):
        raise ConfigError(f"{reader.where(node)}: pipeline #{index + 1} must be a mapping")
    unknown = sorted(set(map(str, node)) - _PIPELINE_KEYS)
    if unknown:
        raise ConfigError(f"{reader.where(node, unknown[0])}: unknown pipeline key '{unknown[0]}'")
    name = reader.string(node, "name", required=True)
    topic = reader.string(node, "topic", required=True)
    match = reader.string(node, "match")
    if match is not None:
        try:
            re.compile(match)
        except re.error as exc:
            raise ConfigError(f"{reader.where(node, 'match')}: bad regex in 'match': {exc}") from None
    steps_node = node.get("steps")
    if not isinstance(steps_node, list) or not steps_node:
        raise ConfigError(f"{reader.where(node, 'steps')}: pipeline '{name}' needs a non-empty list of 'steps'")
    steps: list[tuple[str, dict[str, Any]]] = []
    for step in steps_node:
        if not isinstance(step, dict) or len(step) != 1:
            raise ConfigError(f"{reader.where(step if isinstance(step, dict) else node, None)}: "
                              f"each step is a mapping with one key, e.g. '- save: {{dir: /srv/out}}'")
        kind, options = next(iter(step.items()))
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigError(f"{reader.where(step, kind)}: options of step '{kind}' must be a mapping")
        steps.append((str(kind), dict(options)))
    pipeline = PipelineConfig(
        name=str(name), topic=str(topic), steps=steps, match=match,
        group_id=reader.string(node, "group.id") or reader.string(node, "group_id"),
        retries=int(reader.number(node, "retries", 2, int)),
    )
    if validate_steps is not None:
        _validate_steps(reader, node, pipeline, validate_steps)
    return pipeline


def _validate_steps(reader: _Reader, node: Any, pipeline: PipelineConfig, validate_steps: StepValidator) -> None:
    errors = validate_steps(pipeline.name, pipeline.topic, pipeline.steps)
    if errors:
        steps_node = node.get("steps") or []
        line_of = reader.where(node, "steps")
        # Point at the first offending step when the message names its index (steps[i] counts from 0).
        for i, step in enumerate(steps_node):
            if f"steps[{i}]" in errors[0] or f"step {i + 1}" in errors[0] or f"#{i + 1}" in errors[0]:
                line_of = reader.where(step)
        named = errors[0].startswith(f"pipeline {pipeline.name!r}")
        raise ConfigError(f"{line_of}: {errors[0] if named else f'pipeline {pipeline.name!r}: ' + errors[0]}")


def _from_mapping(data: Any, path: Path | None, validate_steps: StepValidator | None) -> Config:
    reader = _Reader(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{reader.where(data)}: the configuration must be a mapping")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{reader.where(data, unknown[0])}: unknown key '{unknown[0]}' "
                          f"(allowed: {', '.join(sorted(_TOP_KEYS))})")
    cfg = Config(path=path)
    cfg.broker = _stringify(reader.mapping(data, "broker"))
    cfg.consumer = _stringify(reader.mapping(data, "consumer"))
    cfg.producer = _stringify(reader.mapping(data, "producer"))
    cfg.state_dir = Path(reader.string(data, "state_dir", "var") or "var")
    sock = reader.string(data, "control_socket")
    cfg.control_socket = Path(sock) if sock else cfg.state_dir / "omsd.sock"
    cfg.workers = int(reader.number(data, "workers", os.cpu_count() or 1, int, minimum=1))
    cfg.dispatch = str(reader.string(data, "dispatch", Config.dispatch, choices=DISPATCH_POLICIES))
    cfg.shutdown_timeout_secs = float(reader.number(data, "shutdown_timeout_secs", 60.0))
    staging = reader.mapping(data, "staging", {"memory_bytes", "max_file_bytes", "expire_incomplete_secs",
                                               "verify_chunk_hashes"})
    defaults = StagingConfig()
    cfg.staging = StagingConfig(
        memory_bytes=parse_size(staging.get("memory_bytes", defaults.memory_bytes),
                                reader.where(staging, "memory_bytes")),
        max_file_bytes=parse_size(staging.get("max_file_bytes", defaults.max_file_bytes),
                                  reader.where(staging, "max_file_bytes")),
        expire_incomplete_secs=float(reader.number(staging, "expire_incomplete_secs", defaults.expire_incomplete_secs)),
        verify_chunk_hashes=str(reader.string(staging, "verify_chunk_hashes", defaults.verify_chunk_hashes,
                                              choices=("on_mismatch", "at_intake"))),
    )
    heartbeat = reader.mapping(data, "heartbeat", {"topic", "interval_secs", "program_id"})
    if heartbeat:
        cfg.heartbeat = HeartbeatConfig(
            topic=str(reader.string(heartbeat, "topic", required=True)),
            interval_secs=float(reader.number(heartbeat, "interval_secs", 30.0, minimum=0.1)),
            program_id=str(reader.string(heartbeat, "program_id", "omsd")),
        )
    cfg.retry_failed_after_secs = float(reader.number(data, "retry_failed_after_secs", 600.0))
    no_limit = "step_timeout_secs" in data and data["step_timeout_secs"] is None
    cfg.step_timeout_secs = None if no_limit else float(reader.number(data, "step_timeout_secs", 3600.0, minimum=1e-3))
    cfg.state_reserve_bytes = parse_size(data.get("state_reserve_bytes", 64 << 20), reader.where(data, "state_reserve_bytes"))
    cfg.handover_topic = reader.string(data, "handover_topic", DEFAULT_HANDOVER_TOPIC) or None
    log_node = reader.mapping(data, "log", {"topic", "interval_secs", "program_id", "level"})
    if log_node:
        level = str(reader.string(log_node, "level", "warning", choices=("debug", "info", "warning", "error", "critical")))
        cfg.log = LogTopicConfig(
            topic=str(reader.string(log_node, "topic", required=True)),
            interval_secs=float(reader.number(log_node, "interval_secs", 30.0, minimum=0.1)),
            program_id=str(reader.string(log_node, "program_id",
                                         cfg.heartbeat.program_id if cfg.heartbeat else "omsd")),
            level=level,
        )
    cfg.kafkacrypto = read_crypto(data.get("kafkacrypto"), path, reader.where(data, "kafkacrypto"), ConfigError)
    metrics = reader.mapping(data, "metrics", {"port"})
    if metrics:
        cfg.metrics_port = int(reader.number(metrics, "port", 0, int, minimum=0))
    pipelines = data.get("pipelines") or []
    if not isinstance(pipelines, list):
        raise ConfigError(f"{reader.where(data, 'pipelines')}: 'pipelines' must be a list")
    cfg.pipelines = [_read_pipeline(reader, node, i, validate_steps) for i, node in enumerate(pipelines)]
    seen: set[str] = set()
    for node, pipeline in zip(pipelines, cfg.pipelines):
        if pipeline.name in seen:
            raise ConfigError(f"{reader.where(node, 'name')}: duplicate pipeline name '{pipeline.name}'")
        seen.add(pipeline.name)
    return cfg


def _ini_value(value: str, where: str) -> str:
    """OpenMSIStream expands environment variables in values that start with ``$``."""
    if not value.startswith("$"):
        return value

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]

    expanded, count = _INI_VAR_RE.subn(repl, value)
    if not count:
        raise ConfigError(f"{where}: cannot expand {value!r} as an environment variable")
    return expanded


def looks_like_ini(path: Path, text: str) -> bool:
    """True for an OpenMSIStream INI file: a ``.ini``/``.config``/``.cfg`` name, or text opening a ``[section]``."""
    return path.suffix in (".ini", ".config", ".cfg") or text.lstrip().startswith("[")


def config_from_ini(text: str, path: Path | None) -> Config:
    """An omsd config from the text of an OpenMSIStream INI file (``$VAR`` values expanded; no pipelines)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path) if path else "<config>")
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc}") from None
    sections: dict[str, dict[str, Any]] = {}
    for section in parser.sections():
        values = {}
        for key, raw in parser.items(section):
            if key in _INI_IGNORED_KEYS or (key == "node_id" and section in ("broker", "consumer", "producer")):
                continue  # OpenMSIStream keeps node_id for KafkaCrypto, never for librdkafka
            values[key] = _ini_value(raw, f"{path}[{section}] {key}")
        sections[section] = values
    # [s3] and [kafkacrypto] belong to OpenMSIStream programs (the S3 classes read [s3] themselves).
    unknown = sorted(set(sections) - {"broker", "consumer", "producer", "heartbeat", "log", "s3", "kafkacrypto"})
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]")
    consumer = sections.get("consumer", {})
    if consumer.get("auto.offset.reset") == "none":  # OpenMSIStream drops it; librdkafka rejects it
        del consumer["auto.offset.reset"]
    if str(consumer.get("group.id", "")).lower() == "create_new":  # OpenMSIStream: a fresh group every run
        consumer["group.id"] = f"omsd-{uuid.uuid4().hex[:12]}"
    return Config(path=path, broker=sections.get("broker", {}), consumer=consumer, producer=sections.get("producer", {}),
                  kafkacrypto=read_crypto(sections.get("kafkacrypto"), path, f"{path}[kafkacrypto]", ConfigError))


def load_config(path: str | os.PathLike[str], *, require_pipelines: bool = False,
                validate_steps: StepValidator | None = None) -> Config:
    """Read a YAML (``.yaml``/``.yml``/anything else) or INI (``.config``/``.ini``/``[section]``) file.

    ``validate_steps`` checks each pipeline's steps (errors name the step's line); without it the steps
    are only checked for their shape and no user code is imported.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML or INI in UTF-8)") from None
    if looks_like_ini(path, text):
        cfg = config_from_ini(text, path)
    else:
        try:
            data = yaml.load(text, Loader=LineLoader)  # noqa: S506 - SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        cfg = _from_mapping(expand_tree(data, str(path)), path, validate_steps)
    if require_pipelines and not cfg.pipelines:
        raise ConfigError(f"{path}: no pipelines configured ('omsd run' needs at least one)")
    return cfg
