"""Which waiting file a worker slot takes next: balanced dispatch with per-path order, or strict sharding.

Every file has a home slot, ``stable_hash(relative_path) % workers``. Two
generations of one path never run at once and always run in the order they
arrived, whatever the policy:

- ``balanced`` (the default): a slot with room takes the oldest waiting file
  whose path has nothing in flight in another slot (a path in flight in this
  slot may be queued behind itself there: the worker runs its files in order).
  A slow file therefore never holds up the files behind it while another
  worker is idle.
- ``sharded``: a slot takes only files whose home it is, oldest first (for
  steps that keep per-path state inside their worker process).

A file may carry ``not_before`` (a ``time.monotonic()`` time: the back-off of
a file whose step timed out); until then it is not taken, and neither are
later generations of its path — other paths go on.

Waiting files are kept per home slot, in arrival order (a sequence number),
so a take looks at the head of each home queue: all generations of one path
share a home, so the first waiting file of a path is its oldest.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from omsd.wire.sharding import worker_slot_for


class DispatchPolicy(enum.Enum):
    BALANCED = "balanced"
    SHARDED = "sharded"


class Queued(Protocol):
    """What the queue needs of a task."""

    relative_path: str


class DispatchQueue:
    """Files waiting for a worker, and the paths in flight (see the module docstring)."""

    def __init__(self, slots: int, policy: DispatchPolicy = DispatchPolicy.BALANCED) -> None:
        self.slots = slots
        self.policy = policy
        self._homes: list[deque[tuple[int, Queued]]] = [deque() for _ in range(slots)]
        self._seq = itertools.count()
        self._order: dict[int, int] = {}  # id(task) -> sequence number, kept while the task is known here
        self._running: dict[str, tuple[int, int]] = {}  # path -> (slot, files of that path in flight there)

    def home(self, task: Queued) -> int:
        return worker_slot_for(task.relative_path, self.slots)

    # -- waiting files -------------------------------------------------------------------------------
    def push(self, task: Queued) -> None:
        """A new file, behind every file waiting."""
        seq = next(self._seq)
        self._order[id(task)] = seq
        self._homes[self.home(task)].append((seq, task))

    def push_back(self, tasks: list[Queued]) -> None:
        """Files handed back (their worker died, in order): they wait where their arrival puts them."""
        for task in tasks:
            self._leave(task)
            seq = self._order.setdefault(id(task), next(self._seq))
            queue = self._homes[self.home(task)]
            index = bisect.bisect_left([s for s, _ in queue], seq)
            queue.insert(index, (seq, task))

    def take(self, slot: int, now: float | None = None) -> Queued | None:
        """The next file ``slot`` may run, removed from the waiting files and counted in flight there."""
        now = time.monotonic() if now is None else now
        homes = [slot] if self.policy is DispatchPolicy.SHARDED else range(self.slots)
        found = self._oldest_free(slot, homes, now)
        if found is None:
            return None
        home, index = found
        queue = self._homes[home]
        _seq, task = queue[index]
        del queue[index]
        _slot, count = self._running.get(task.relative_path, (slot, 0))
        self._running[task.relative_path] = (slot, count + 1)
        return task

    def _oldest_free(self, slot: int, homes: "range | list[int]", now: float) -> tuple[int, int] | None:
        """(home, index) of the oldest file of ``homes`` that ``slot`` may take now."""
        best: tuple[int, int, int] | None = None  # (seq, home, index)
        for home in homes:
            blocked: set[str] = set()
            for index, (seq, task) in enumerate(self._homes[home]):
                if best is not None and seq > best[0]:
                    break
                path = task.relative_path
                where = self._running.get(path)
                if (path in blocked or (where is not None and where[0] != slot)
                        or getattr(task, "not_before", 0.0) > now):
                    blocked.add(path)  # its later generations wait behind it
                    continue
                best = (seq, home, index)
                break
        return None if best is None else (best[1], best[2])

    # -- files in flight -----------------------------------------------------------------------------
    def done(self, task: Queued) -> None:
        """A file taken earlier is finished (or was lost with its worker): its path may run anywhere again."""
        self._leave(task)
        self._order.pop(id(task), None)

    def release(self, task: Queued) -> None:
        """A file taken earlier is no longer in flight, and will be pushed back later (keeping its place)."""
        self._leave(task)

    def _leave(self, task: Queued) -> None:
        where = self._running.get(task.relative_path)
        if where is None:
            return
        slot, count = where
        if count <= 1:
            del self._running[task.relative_path]
        else:
            self._running[task.relative_path] = (slot, count - 1)

    # -- questions -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(q) for q in self._homes)

    def __iter__(self) -> Iterator[Queued]:
        """Every waiting file, home slot by home slot (see :meth:`ordered` for arrival order)."""
        return (task for queue in self._homes for _seq, task in queue)

    def ordered(self) -> list[Queued]:
        """Every waiting file, oldest first."""
        return [task for _seq, task in sorted((e for q in self._homes for e in q), key=lambda e: e[0])]

    def waiting_by_home(self) -> list[int]:
        return [len(q) for q in self._homes]

    def clear(self) -> list[Queued]:
        """Forget every waiting file (a graceful stop hands them back to Kafka); returns them."""
        out = self.ordered()
        for queue in self._homes:
            queue.clear()
        for task in out:
            self._order.pop(id(task), None)
        return out
