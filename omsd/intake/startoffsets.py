"""Where a newly assigned partition starts reading: its committed offset, or the reset end.

Left to itself, librdkafka starts a partition that has no committed offset (a new group) about
100 ms after the assignment: it looks the committed offset up, finds none, and only sends the
``auto.offset.reset`` query on a later turn of its broker thread. Looking the committed offsets
up here, in one request, and assigning either those or the logical beginning / end
(``OFFSET_BEGINNING`` / ``OFFSET_END``, which librdkafka resolves at once) starts the first fetch
within a few milliseconds. Nothing else changes: the offsets are the ones librdkafka would have
used, and an out-of-range committed offset still falls back to ``auto.offset.reset``.

Only for the eager rebalance protocol (an explicit ``assign`` replaces the whole assignment) and a
reset policy that names an end; anything else, and any failure of the lookup, leaves the
assignment to librdkafka as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

log = structlog.get_logger(__name__)

LOOKUP_TIMEOUT_S = 5.0

_RESET_ENDS = {"smallest": OFFSET_BEGINNING, "earliest": OFFSET_BEGINNING, "beginning": OFFSET_BEGINNING,
               "largest": OFFSET_END, "latest": OFFSET_END, "end": OFFSET_END}


def reset_offset(props: dict[str, Any]) -> int | None:
    """The logical offset for partitions without a committed one, or None to leave them to librdkafka.

    None also when the group uses the cooperative protocol, where an explicit assignment would
    replace the partitions the member already owns.
    """
    if "cooperative" in str(props.get("partition.assignment.strategy", "")).lower():
        return None
    if str(props.get("group.protocol", "classic")).lower() != "classic":
        return None
    return _RESET_ENDS.get(str(props.get("auto.offset.reset", "largest")).lower())


def start_offsets(consumer: Any, partitions: Sequence[TopicPartition], reset: int,
                  timeout: float = LOOKUP_TIMEOUT_S) -> list[TopicPartition] | None:
    """``partitions`` with the offsets to start from, or None if the committed offsets cannot be read."""
    try:
        committed = consumer.committed(list(partitions), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - librdkafka then looks them up itself, only later
        log.warning("could not read committed offsets; librdkafka will", error=str(exc))
        return None
    for part in committed:
        if part.error is not None:
            log.warning("could not read a committed offset; librdkafka will", topic=part.topic,
                        partition=part.partition, error=str(part.error))
            return None
        if part.offset < 0:
            part.offset = reset
    return committed
