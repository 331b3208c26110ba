"""Where a newly assigned partition starts (omsd.intake.startoffsets), and the handover topic opened at start.

Against the embedded broker: a new group starts at the reset end it names, a group with a committed
offset starts there, and a lookup that cannot reach a broker leaves the assignment to librdkafka.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_INVALID, Consumer, Producer, TopicPartition

from omsd.config import Config
from omsd.dev.broker import free_port
from omsd.intake.handover import HandoverLog
from omsd.intake.offsetranges import OffsetRanges
from omsd.intake.startoffsets import reset_offset, start_offsets
from tests.conftest import client_props


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(10) == 0


def read_with_start_offsets(bootstrap: str, topic: str, group: str, reset: str, expect: int,
                            before_reading=None, explicit: bool = True
                            ) -> tuple[list[TopicPartition], list[tuple[int, bytes]]]:
    """Subscribe as the intake does; return the start offsets assigned and the partition-0 messages read.

    ``explicit=False``: leave the start to librdkafka, as before :mod:`omsd.intake.startoffsets`.
    """
    props = {**client_props(bootstrap), "group.id": group, "auto.offset.reset": reset, "enable.auto.commit": False}
    consumer = Consumer(props)
    assigned: list[TopicPartition] = []

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        if not explicit:
            assigned.extend(partitions)
            return
        starts = start_offsets(c, partitions, reset_offset(props))
        assert starts is not None
        c.assign(starts)
        assigned.extend(starts)

    consumer.subscribe([topic], on_assign=on_assign)
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and (not assigned or len(got) < expect):
            msg = consumer.poll(0.1)
            if assigned and before_reading is not None:
                before_reading()
                before_reading = None
            if msg is not None and msg.error() is None and msg.partition() == 0:
                got.append((msg.offset(), msg.value()))
    finally:
        consumer.close()
    return assigned, got


def test_the_reset_policy_names_the_start_of_partitions_without_a_committed_offset() -> None:
    assert reset_offset({"auto.offset.reset": "earliest"}) == OFFSET_BEGINNING
    assert reset_offset({"auto.offset.reset": "smallest"}) == OFFSET_BEGINNING
    assert reset_offset({"auto.offset.reset": "latest"}) == OFFSET_END
    assert reset_offset({}) == OFFSET_END  # librdkafka's default, "largest"
    assert reset_offset({"auto.offset.reset": "error"}) is None  # librdkafka raises it; left to librdkafka
    # An explicit assign would replace what a cooperative member already owns: left to librdkafka too.
    assert reset_offset({"auto.offset.reset": "earliest",
                         "partition.assignment.strategy": "cooperative-sticky"}) is None
    assert reset_offset({"auto.offset.reset": "earliest", "group.protocol": "consumer"}) is None


def test_a_new_group_starts_at_the_beginning_and_reads_everything(broker) -> None:
    topic = f"so-{uuid.uuid4().hex[:8]}"
    produce(broker.bootstrap, topic, [b"a", b"b", b"c"])
    assigned, got = read_with_start_offsets(broker.bootstrap, topic, f"g-{uuid.uuid4().hex[:6]}", "earliest", 3)
    assert assigned and all(p.offset == OFFSET_BEGINNING for p in assigned)
    assert got == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_a_new_group_with_latest_starts_where_librdkafka_itself_would(broker) -> None:
    # The embedded broker answers a "latest" query with the last offset, not the next one (DESIGN.md §4):
    # either way the reader starts where librdkafka's own lookup would have started it.
    reads = []
    for explicit in (False, True):
        topic = f"so-{uuid.uuid4().hex[:8]}"
        produce(broker.bootstrap, topic, [b"old-1", b"old-2"])
        assigned, got = read_with_start_offsets(
            broker.bootstrap, topic, f"g-{uuid.uuid4().hex[:6]}", "latest", 2, explicit=explicit,
            before_reading=lambda: (time.sleep(1), produce(broker.bootstrap, topic, [b"new"])))
        assert assigned and all(p.offset == (OFFSET_END if explicit else OFFSET_INVALID) for p in assigned)
        assert got[-1:] == [(2, b"new")] and (0, b"old-1") not in got
        reads.append(got)
    assert reads[0] == reads[1]


def test_a_group_with_a_committed_offset_starts_there(broker) -> None:
    topic, group = f"so-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:6]}"
    produce(broker.bootstrap, topic, [b"a", b"b", b"c", b"d"])
    committer = Consumer({**client_props(broker.bootstrap), "group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    committer.close()
    assigned, got = read_with_start_offsets(broker.bootstrap, topic, group, "earliest", 2)
    assert [p.offset for p in assigned if p.partition == 0] == [2]
    assert got == [(2, b"c"), (3, b"d")]


def test_without_a_broker_the_lookup_gives_up_and_leaves_the_start_to_librdkafka() -> None:
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "group.id": "nobody",
                         "log_level": 0})
    try:
        assert start_offsets(consumer, [TopicPartition("t", 0)], OFFSET_BEGINNING, timeout=0.5) is None
    finally:
        consumer.close()


def test_the_handover_topic_opened_at_start_is_ready_at_the_first_assignment(broker) -> None:
    config = Config(broker={"bootstrap.servers": broker.bootstrap})
    name, group = f"ho-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:6]}"
    first = HandoverLog(config, name)
    assert first.ready()
    assert first.publish(group, {("data", 0): (5, OffsetRanges([(7, 9)]))})
    first.close()

    second = HandoverLog(config, name)
    second.open_in_background()
    assert second.ready()  # waits for the opening, then checks the topic is still there
    assert list(second.lookup(group, ("data", 0), 5)) == [(7, 9)]
    second.close()


def test_an_opening_that_waits_on_an_absent_broker_holds_up_neither_assignment_nor_stop() -> None:
    config = Config(broker={"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    log = HandoverLog(config, "omsd.handover")
    log.open_in_background(timeout=30)
    started = time.monotonic()
    assert log.ready(timeout=0.3) is False  # still opening: this assignment goes on without it
    log.close()
    assert time.monotonic() - started < 10  # neither waited for the 30 s opening
