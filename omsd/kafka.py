"""Building Kafka clients from omsd's configuration (supervisor side only)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from omsd.config import Config

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


def consumer_config(config: Config, group_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka consumer properties: defaults < broker < consumer section < overrides."""
    props = {**CONSUMER_DEFAULTS, **_clean(config.broker), **_clean(config.consumer), **overrides}
    props["group.id"] = group_id
    # omsd commits its own safe offsets; auto-commit would lose files on a crash.
    props["enable.auto.commit"] = False
    props["enable.auto.offset.store"] = False
    return props


def producer_config(config: Config, **overrides: Any) -> dict[str, Any]:
    """librdkafka producer properties: defaults < broker < producer section < overrides."""
    return {**PRODUCER_DEFAULTS, **_clean(config.broker), **_clean(config.producer), **overrides}


def admin_config(config: Config) -> dict[str, Any]:
    """librdkafka properties for an admin client: the broker section only."""
    return _clean(config.broker)


def make_consumer(config: Config, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(config, group_id, **overrides))


def make_producer(config: Config, **overrides: Any) -> Producer:
    return Producer(producer_config(config, **overrides))
