"""Building Kafka clients from omsd's configuration (supervisor side only).

Every client logs through :data:`KAFKA_LOG` (see :mod:`omsd.telemetry.kafkalog`): librdkafka's own lines
never reach stderr raw. :func:`check_client_configs` builds the clients' configurations once, without
connecting, so that a misspelt librdkafka property is a configuration error before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from omsd.config import Config, ConfigError
from omsd.telemetry.kafkalog import KafkaLog

#: The process's receiver of librdkafka's logs, errors and statistics.
KAFKA_LOG = KafkaLog()

# Chunk messages are up to a few MiB; leave room for large chunk sizes.
MAX_MESSAGE_BYTES = 64 << 20

CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 300000,
    # A daemon started before its topic exists should find it within seconds.
    "topic.metadata.refresh.interval.ms": 5000,
    "fetch.max.bytes": MAX_MESSAGE_BYTES,
    "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
    "receive.message.max.bytes": MAX_MESSAGE_BYTES + (1 << 20),
    # While the workers catch up the supervisor stops consuming and librdkafka's prefetch queue fills up;
    # librdkafka then postpones each partition's next fetch by this long (default 1000 ms), which left the
    # whole pipeline idle for up to a second after every catch-up.
    "fetch.queue.backoff.ms": 20,
    # How long the broker may hold a fetch that finds nothing new (librdkafka's default 500 ms). The embedded
    # broker answers such a fetch only when this runs out, so a file sent to an idle daemon waited up to this
    # long; at 10 ms an idle consumer sends about a hundred small fetches a second.
    "fetch.wait.max.ms": 10,
}

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "linger.ms": 20,
    "batch.size": 4 << 20,
    "message.max.bytes": MAX_MESSAGE_BYTES,
    "queue.buffering.max.kbytes": 512 * 1024,
    "compression.type": "none",
}

# Keys only meaningful to OpenMSIStream; librdkafka would refuse them.
_IGNORED = {"key.serializer", "value.serializer", "key.deserializer", "value.deserializer"}


def _clean(props: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in props.items():
        if key in _IGNORED:
            continue
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        out[key] = value
    return out


def consumer_config(config: Config, group_id: str, *, polled: bool = False,
                    on_error: Callable[[Any], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """librdkafka consumer properties: defaults < broker < consumer section < overrides.

    ``polled``: the client is polled all the time, so it also reports librdkafka's statistics;
    ``on_error`` receives its errors besides :data:`KAFKA_LOG`.
    """
    props = {**CONSUMER_DEFAULTS, **KAFKA_LOG.client_settings(polled=polled, on_error=on_error),
             **_clean(config.broker),
             **_clean(config.consumer), **overrides}
    props["group.id"] = group_id
    # omsd commits its own safe offsets; auto-commit would lose files on a crash.
    props["enable.auto.commit"] = False
    props["enable.auto.offset.store"] = False
    return props


def producer_config(config: Config, *, polled: bool = False, on_error: Callable[[Any], None] | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """librdkafka producer properties: defaults < broker < producer section < overrides."""
    return {**PRODUCER_DEFAULTS, **KAFKA_LOG.client_settings(polled=polled, on_error=on_error),
            **_clean(config.broker),
            **_clean(config.producer), **overrides}


def admin_config(config: Config) -> dict[str, Any]:
    """librdkafka properties for an admin client: the broker section only."""
    return {**KAFKA_LOG.client_settings(polled=False), **_clean(config.broker)}


def make_consumer(config: Config, group_id: str, *, polled: bool = False,
                  on_error: Callable[[Any], None] | None = None, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(config, group_id, polled=polled, on_error=on_error, **overrides))


def make_producer(config: Config, *, polled: bool = False, on_error: Callable[[Any], None] | None = None,
                  **overrides: Any) -> Producer:
    return Producer(producer_config(config, polled=polled, on_error=on_error, **overrides))


_PROPERTY = re.compile(r'property:? "([^"]+)"')


def check_client_configs(config: Config, kinds: tuple[str, ...] = ("consumer", "producer")) -> None:
    """Build the ``kinds`` of client from ``config`` without connecting (no bootstrap servers), so that
    librdkafka checks every property now; raise :class:`ConfigError` naming the key's file and line."""
    for kind in kinds:
        if kind == "consumer":
            sections, props = ("consumer", "broker"), consumer_config(config, "omsd-config-check")
        else:
            sections, props = ("producer", "broker"), producer_config(config)
        props = {k: v for k, v in props.items() if k not in ("bootstrap.servers", "metadata.broker.list")}
        try:
            client = Consumer(props) if kind == "consumer" else Producer(props)
        except (KafkaException, ValueError, TypeError) as exc:
            message = exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else str(exc)
            named = _PROPERTY.findall(message)
            key = named[-1] if named else None
            section = next((s for s in sections if key is not None and key in getattr(config, s)), None)
            if section is None:
                raise ConfigError(f"{where(config, '', '')}: librdkafka refuses the {kind} settings: {message}") \
                    from None
            raise ConfigError(f"{where(config, section, key)}: {section} property '{key}': {message} "
                              "(librdkafka)") from None
        if isinstance(client, Consumer):
            client.close()


def where(config: Config, section: str, key: str) -> str:
    """``file:line`` of ``key`` in ``section`` of the config file (YAML or INI), or the file alone.

    Found by reading the file again, only when there is an error to report: the key's line within its
    section (a ``section:`` line or ``[section]`` header), else the section's own line.
    """
    name = str(config.path) if config.path else "<config>"
    try:
        text = config.path.read_text(encoding="utf-8") if config.path else ""
    except (OSError, UnicodeError):
        return name
    header = re.compile(rf"^(?:{re.escape(section)}\s*:|\[\s*{re.escape(section)}\s*\])", re.IGNORECASE)
    any_header = re.compile(r"^(?:[\w.-]+\s*:|\[[^\]]*\])")
    entry = re.compile(rf"(?:^|[{{,]\s*)[\"']?{re.escape(key)}[\"']?\s*[:=]", re.IGNORECASE)
    inside, section_line = False, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if header.match(line):
            inside, section_line = True, number
        elif any_header.match(line):
            inside = False
        if inside and key and entry.search(line.strip() if number != section_line else line.split(":", 1)[-1]):
            return f"{name}:{number}"
    return f"{name}:{section_line}" if section_line else name
