"""Messages an intake cannot use: each logged with where it is, counted by reason, the latest kept for status."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import structlog

from omsd.intake.watermark import TopicPartitionKey
from omsd.wire.protocol import ProtocolError

log = structlog.get_logger(__name__)

RECENT_REJECTIONS = 50


class Rejections:
    """The rejected messages of one consumer group (``omsctl status`` shows the counts and the latest)."""

    def __init__(self, group_id: str, on_reject: Callable[[str], None] | None = None) -> None:
        self.group_id = group_id
        self.on_reject = on_reject
        self.counts: Counter[str] = Counter()
        self.recent: list[dict] = []

    def add(self, exc: ProtocolError, tp: TopicPartitionKey, offset: int) -> None:
        """A message we cannot use: logged with where it is, counted, skipped."""
        self.counts[exc.reason] += 1
        if self.on_reject is not None:
            self.on_reject(exc.reason)
        entry = {"time": time.time(), "topic": tp[0], "partition": tp[1], "offset": offset, "reason": exc.reason,
                 "detail": exc.detail}
        self.recent = (self.recent + [entry])[-RECENT_REJECTIONS:]
        log.warning("rejected message", group=self.group_id, topic=tp[0], partition=tp[1], offset=offset,
                    reason=exc.reason, detail=exc.detail)
