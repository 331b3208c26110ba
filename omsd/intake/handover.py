"""Handover records: what the previous owner of a partition already finished above its committed offset.

A partition has one committed offset, and a daemon commits only below files it
has not finished (see :mod:`omsd.intake.watermark`). When it gives a partition up —
a rebalance or a graceful stop — while a file there is still incomplete, files
above that offset may already be done. Before committing, it publishes the
finished offsets above the committed one to the handover topic; whoever owns
the partition next (another daemon of the group, or this one after a restart)
skips those messages instead of processing their files a second time.

A record applies only while the partition's committed offset is still the one
it was written with, so an old record can never hide newer messages. Records
are keyed by group, topic and partition, and the topic is created compacted.
Without the topic (no rights to create it, or ``handover_topic: null``) the
daemon works as before: the next owner repeats the files finished above the
committed offset.

The topic is opened in a thread at start-up (:meth:`HandoverLog.open_in_background`), while the
group join is still under way, so that the first assignment does not wait for it; the assignment
waits only for what is left of that opening.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import msgpack
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from omsd.config import Config
from omsd.kafka import admin_config, consumer_config, make_producer
from omsd.intake.offsetranges import OffsetRanges
from omsd.intake.watermark import TopicPartitionKey, Watermarks

log = structlog.get_logger(__name__)

RECORD_VERSION = 1
MAX_RANGES = 8192  # beyond this the highest ranges are left out: those messages are read again, never lost
POLL_S = 0.1


@dataclass(frozen=True)
class Handover:
    """Offsets finished above ``committed`` on one partition."""

    committed: int
    done: OffsetRanges


def changed_progress(watermarks: Watermarks, tps: set[TopicPartitionKey],
                     published: dict[TopicPartitionKey, tuple[int, list[int]]], *, every: bool
                     ) -> dict[TopicPartitionKey, tuple[int, OffsetRanges]]:
    """Each partition's progress (its committed offset, what is finished above it) to publish: all of
    it with ``every``, else only what changed since ``published``, which is brought up to date."""
    progress = {}
    for tp in tps:
        found = watermarks.progress(tp)
        if found is None:
            continue
        flat = (found[0], found[1].flat())
        if every or published.get(tp) != flat:
            progress[tp] = found
            published[tp] = flat
    return progress


def record_key(group: str, topic: str, partition: int) -> bytes:
    return json.dumps([group, topic, partition]).encode()


def encode(committed: int, done: OffsetRanges) -> bytes:
    return msgpack.packb([RECORD_VERSION, committed, done.flat(MAX_RANGES)])


def decode(value: bytes | None) -> Handover | None:
    """A record's content, or None when it is not one this version understands."""
    try:
        version, committed, flat = msgpack.unpackb(value or b"", strict_map_key=True)
        if version != RECORD_VERSION or not isinstance(committed, int) or not isinstance(flat, list) \
                or not all(isinstance(x, int) for x in flat):
            return None
        return Handover(committed, OffsetRanges.from_flat(flat))
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


class HandoverLog:
    """Reads and writes one handover topic for every consumer group of the daemon."""

    def __init__(self, config: Config, topic: str) -> None:
        self.topic = topic
        self._admin_config = admin_config(config)
        self._producer = make_producer(config, **{"linger.ms": 0})
        # Paused between catch-ups, with short fetch waits: a fetch waiting on the broker would hold up
        # the watermark queries behind it on the same connection.
        self._reader: Consumer = Consumer(consumer_config(config, "omsd-handover-reader",
                                                          **{"enable.partition.eof": False,
                                                             "fetch.wait.max.ms": 20}))
        self._latest: dict[bytes, Handover] = {}
        self._partitions: list[int] = []
        self.available = False
        self._undelivered = 0
        self._admin: AdminClient | None = None
        self._opener: threading.Thread | None = None

    def open_in_background(self, timeout: float = 10.0) -> None:
        """Start :meth:`open` in a thread; :meth:`ready` and :meth:`close` wait for it."""
        self._opener = threading.Thread(target=self.open, args=(timeout,), name="omsd-handover-open", daemon=True)
        self._opener.start()

    def _opened(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a background opening; False if it is still under way."""
        if self._opener is not None:
            self._opener.join(timeout)
            if self._opener.is_alive():
                return False
            self._opener = None
        return True

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self._admin_config)
        return self._admin

    def ready(self, timeout: float = 10.0) -> bool:
        """True when records can be read and written. Called when partitions are assigned (the broker
        has just answered): an unavailable topic is tried again then, and one in use is checked to be still
        there (a memory-only broker that restarted, or a deleted topic, has lost it and its records)."""
        if not self._opened(timeout):
            log.warning("handover topic still being opened; a partition's next owner may repeat files finished "
                        "above its committed offset", topic=self.topic)
            return False
        if self.available and not self._still_there(timeout):
            log.warning("handover topic is gone (deleted, or the broker restarted empty); creating it again",
                        topic=self.topic)
            self._latest.clear()
            self.available = False
        if not self.available:
            self.open()
        return self.available

    def _still_there(self, timeout: float) -> bool:
        try:
            found = self._admin_client().list_topics(timeout=timeout).topics.get(self.topic)
        except KafkaException:
            return True  # cannot tell now; publishing will say if it is not
        return found is not None and found.error is None and sorted(found.partitions) == self._partitions

    def open(self, timeout: float = 10.0) -> bool:
        """Make sure the topic exists and read it; False (logged) when it cannot be used."""
        try:
            self._partitions = self._ensure_topic(timeout)
            self._reader.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions])
            self._reader.pause(self._topic_partitions())
            self.available = self.catch_up(timeout)
        except (KafkaException, RuntimeError) as exc:
            log.warning("handover topic unavailable; a partition's next owner may repeat files finished above "
                        "its committed offset", topic=self.topic, error=str(exc))
            self.available = False
        return self.available

    def _ensure_topic(self, timeout: float) -> list[int]:
        admin = self._admin_client()
        # From the list of all topics: asking for this one by name would make a broker that auto-creates
        # topics create it, with its default partition count.
        found = admin.list_topics(timeout=timeout).topics.get(self.topic)
        if found is None or found.error is not None:
            new = NewTopic(self.topic, num_partitions=1, replication_factor=-1, config={"cleanup.policy": "compact"})
            try:
                admin.create_topics([new], operation_timeout=timeout)[self.topic].result(timeout)
                log.info("handover topic created", topic=self.topic)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            deadline = time.monotonic() + timeout
            while True:
                found = admin.list_topics(timeout=timeout).topics.get(self.topic)
                if found is not None and found.error is None and found.partitions:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {self.topic!r} has no partitions after creation")
                time.sleep(POLL_S)
        return sorted(found.partitions)

    def _topic_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in self._partitions]

    def catch_up(self, timeout: float = 10.0) -> bool:
        """Read every record published so far; False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        ends = {p: self._reader.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout)[1]
                for p in self._partitions}
        self._reader.resume(self._topic_partitions())
        try:
            return self._read_to(ends, deadline, timeout)
        finally:
            self._reader.pause(self._topic_partitions())

    def _read_to(self, ends: dict[int, int], deadline: float, timeout: float) -> bool:
        while True:
            positions = {tp.partition: tp.offset for tp in self._reader.position(self._topic_partitions())}
            behind = [p for p, high in ends.items() if high > 0 and positions.get(p, -1) < high]
            if not behind:
                return True
            if time.monotonic() > deadline:
                log.warning("handover topic not read to its end in time", topic=self.topic, timeout_s=timeout)
                return False
            for msg in self._reader.consume(num_messages=500, timeout=POLL_S):
                if msg.error() is None and msg.key():
                    record = decode(msg.value())
                    if record is not None:
                        self._latest[msg.key()] = record

    def lookup(self, group: str, tp: TopicPartitionKey, committed: int) -> OffsetRanges | None:
        """The offsets the previous owner finished above ``committed``, if it left a record for exactly that."""
        record = self._latest.get(record_key(group, *tp))
        if record is None or record.committed != committed:
            return None
        return OffsetRanges(record.done)

    def publish(self, group: str, progress: dict[TopicPartitionKey, tuple[int, OffsetRanges]], wait: bool = True,
                timeout: float = 10.0) -> bool:
        """Write the records; with ``wait``, return whether the broker has them all."""
        self._undelivered = 0
        for tp, (committed, done) in progress.items():
            key = record_key(group, *tp)
            self._producer.produce(self.topic, key=key, value=encode(committed, done), on_delivery=self._delivered)
            self._latest[key] = Handover(committed, OffsetRanges(done))
        if not wait:
            self._producer.poll(0)
            return True
        left = self._producer.flush(timeout)
        if left or self._undelivered:
            log.warning("handover records not delivered; the next owner may repeat finished files",
                        topic=self.topic, group=group, undelivered=left + self._undelivered)
            return False
        return True

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._undelivered += 1
            log.warning("handover record not delivered", topic=self.topic, error=str(err))

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what was published and close the clients; at once if the opening still waits on the
        broker (nothing was published then, and its clients go with the process)."""
        if not self._opened(0):
            return
        self._producer.flush(timeout)
        self._reader.close()
