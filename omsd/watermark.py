"""Per-partition safe offsets: commit only what no unfinished file still needs.

Every file in assembly or processing holds, on each partition it has chunks
in, the lowest offset it was read from. The safe offset of a partition is
the lowest hold, or the next offset after the last consumed message when
nothing holds it. Committing that offset means a restart re-reads exactly the
chunks of files that were unfinished, and nothing before them.
"""

from __future__ import annotations

from collections import defaultdict

TopicPartition = tuple[str, int]


class Watermarks:
    """Safe-offset bookkeeping for the partitions of one consumer."""

    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}
        self._holds: dict[TopicPartition, dict[int, int]] = defaultdict(dict)
        self._holder_tps: dict[int, set[TopicPartition]] = defaultdict(set)
        self._committed: dict[TopicPartition, int] = {}

    def consumed(self, tp: TopicPartition, offset: int) -> None:
        """A message at ``offset`` was read (whatever became of it)."""
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1

    def seen(self, tp: TopicPartition, offset: int) -> bool:
        """True when ``offset`` was read before (the partition is being read again after a seek)."""
        return offset < self._next.get(tp, -1)

    def hold(self, tp: TopicPartition, holder: int, offset: int) -> None:
        """``holder`` (a file) needs ``offset`` on ``tp`` until it is released."""
        holds = self._holds[tp]
        if holder not in holds or offset < holds[holder]:
            holds[holder] = offset
        self._holder_tps[holder].add(tp)

    def release(self, holder: int) -> None:
        """The file's outcome is durably recorded: it no longer needs its offsets."""
        for tp in self._holder_tps.pop(holder, ()):
            self._holds[tp].pop(holder, None)

    def held(self, holder: int) -> dict[TopicPartition, int]:
        """The offsets ``holder`` still needs, per partition."""
        return {tp: self._holds[tp][holder] for tp in self._holder_tps.get(holder, ()) if holder in self._holds[tp]}

    def safe(self, tp: TopicPartition) -> int | None:
        """The offset that is safe to commit on ``tp`` (None if nothing was read there)."""
        holds = self._holds.get(tp)
        if holds:
            return min(holds.values())
        return self._next.get(tp)

    def to_commit(self, assigned: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Safe offsets that moved since the last commit, restricted to ``assigned``."""
        out = {}
        for tp in set(self._next) | {tp for tp, h in self._holds.items() if h}:
            if assigned is not None and tp not in assigned:
                continue
            safe = self.safe(tp)
            if safe is not None and safe > self._committed.get(tp, -1):
                out[tp] = safe
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def committed_offset(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions were revoked: drop what we knew about them."""
        for tp in tps:
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
            for holder in list(self._holds.get(tp, {})):
                self._holder_tps[holder].discard(tp)
            self._holds.pop(tp, None)

    def partitions(self) -> set[TopicPartition]:
        return set(self._next) | set(self._committed)
