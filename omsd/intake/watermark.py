"""Per-partition safe offsets: commit only what no unfinished file still needs.

Every file in assembly or processing holds, on each partition it has chunks
in, the lowest offset it was read from. The safe offset of a partition is
the lowest hold, or the next offset after the last consumed message when
nothing holds it. Committing that offset means a restart re-reads exactly the
chunks of files that were unfinished, and nothing before them.

Above the safe offset, the offsets of messages whose handling is finished
(files whose outcome is recorded, rejected messages, files no pipeline wants)
are kept as ranges. Handed to the next owner of a partition (see
:mod:`omsd.intake.handover`), they let it skip what this daemon already did.
"""

from __future__ import annotations

from collections import defaultdict

from omsd.intake.offsetranges import OffsetRanges

#: A partition as a plain ``(topic, partition)`` pair (``confluent_kafka.TopicPartitionKey`` is the client's class).
TopicPartitionKey = tuple[str, int]


class Watermarks:
    """Safe-offset bookkeeping for the partitions of one consumer."""

    def __init__(self) -> None:
        self._next: dict[TopicPartitionKey, int] = {}
        self._holds: dict[TopicPartitionKey, dict[int, int]] = defaultdict(dict)
        self._holder_tps: dict[int, set[TopicPartitionKey]] = defaultdict(set)
        self._committed: dict[TopicPartitionKey, int] = {}
        self._offsets: dict[int, dict[TopicPartitionKey, list[int]]] = defaultdict(dict)
        self._done: dict[TopicPartitionKey, OffsetRanges] = {}

    def consumed(self, tp: TopicPartitionKey, offset: int) -> None:
        """A message at ``offset`` was read (whatever became of it)."""
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1

    def seen(self, tp: TopicPartitionKey, offset: int) -> bool:
        """True when ``offset`` was read before (the partition is being read again after a seek)."""
        return offset < self._next.get(tp, -1)

    def hold(self, tp: TopicPartitionKey, holder: int, offset: int) -> None:
        """``holder`` (a file) needs ``offset`` on ``tp`` until it is released."""
        holds = self._holds[tp]
        if holder not in holds or offset < holds[holder]:
            holds[holder] = offset
        self._holder_tps[holder].add(tp)
        self._offsets[holder].setdefault(tp, []).append(offset)

    def release(self, holder: int, done: bool = True) -> None:
        """The file no longer needs its offsets: its outcome is durably recorded (``done``), or it was
        dropped unfinished (its partitions were revoked; the next owner reads it again)."""
        offsets = self._offsets.pop(holder, {})
        for tp in self._holder_tps.pop(holder, ()):
            self._holds[tp].pop(holder, None)
            if done:
                self._finish(tp, offsets.get(tp, ()))

    def finished(self, tp: TopicPartitionKey, offset: int) -> None:
        """The message at ``offset`` needs nothing more (rejected, unwanted, or its file already done)."""
        if self._holds.get(tp):  # otherwise the safe offset passes it as soon as it is consumed
            self._finish(tp, (offset,))

    def _finish(self, tp: TopicPartitionKey, offsets: "list[int] | tuple[int, ...]") -> None:
        safe = self.safe(tp)
        if safe is None:
            return  # a partition we no longer own
        above = [o for o in offsets if o >= safe]  # those below are passed by the next commit anyway
        if above:
            self._done.setdefault(tp, OffsetRanges()).add_offsets(above)

    def inherit(self, tp: TopicPartitionKey, committed: int, done: OffsetRanges) -> None:
        """The previous owner of ``tp`` finished ``done`` above ``committed``, where we start reading."""
        done.drop_below(committed)
        if done:
            mine = self._done.setdefault(tp, OffsetRanges())
            for start, end in done:
                mine.add_range(start, end)

    def handed_over(self, tp: TopicPartitionKey, offset: int) -> bool:
        """True when the previous owner of ``tp`` finished the message at ``offset`` and we have not
        read it ourselves yet."""
        done = self._done.get(tp)
        return done is not None and offset in done and not self.seen(tp, offset)

    def progress(self, tp: TopicPartitionKey) -> tuple[int, OffsetRanges] | None:
        """The safe offset of ``tp`` and the finished offsets above it, when there are any."""
        safe = self.safe(tp)
        done = self._done.get(tp)
        if safe is None or done is None:
            return None
        done.drop_below(safe)
        return (safe, done) if done else None

    def held(self, holder: int) -> dict[TopicPartitionKey, int]:
        """The offsets ``holder`` still needs, per partition."""
        return {tp: self._holds[tp][holder] for tp in self._holder_tps.get(holder, ()) if holder in self._holds[tp]}

    def safe(self, tp: TopicPartitionKey) -> int | None:
        """The offset that is safe to commit on ``tp`` (None if nothing was read there)."""
        holds = self._holds.get(tp)
        if holds:
            return min(holds.values())
        return self._next.get(tp)

    def to_commit(self, assigned: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Safe offsets that moved since the last commit, restricted to ``assigned``."""
        out = {}
        for tp in set(self._next) | {tp for tp, h in self._holds.items() if h}:
            if assigned is not None and tp not in assigned:
                continue
            safe = self.safe(tp)
            if safe is not None and safe > self._committed.get(tp, -1):
                out[tp] = safe
        return out

    def committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        self._committed.update(offsets)
        for tp, offset in offsets.items():
            if tp in self._done:
                self._done[tp].drop_below(offset)

    def committed_offset(self, tp: TopicPartitionKey) -> int | None:
        return self._committed.get(tp)

    def forget(self, tps: set[TopicPartitionKey]) -> None:
        """Partitions were revoked: drop what we knew about them."""
        for tp in tps:
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
            for holder in list(self._holds.get(tp, {})):
                self._holder_tps[holder].discard(tp)
            self._holds.pop(tp, None)
            self._done.pop(tp, None)

    def partitions(self) -> set[TopicPartitionKey]:
        return set(self._next) | set(self._committed)
