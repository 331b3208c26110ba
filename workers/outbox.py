"""A worker's reports, held back until the files they concern are durable.

The worker works through the files it holds (the supervisor may hand it
several ahead) and puts each report (step outcomes, the file's result) here.
:meth:`Outbox.flush` — called when the worker has nothing more in hand, when
:data:`FLUSH_EVERY` results or a report older than :data:`FLUSH_AFTER_S` are
held, and before the worker exits — makes the files saved for the held
reports durable (:func:`workers.durability.make_durable`, once for the
group) and then sends the reports, in order, in one pipe write.

Where that barrier is quick (tmpfs, a fast disk: the recent ones took less
than :data:`QUICK_BARRIER_S`), or the worker has nothing else to do, the
worker runs it itself between two files. Where it is slow, it goes to a
sender thread, so that the disk wait overlaps the next files' work, for up
to :data:`SLOW_GROUP` results at a time; the worker says every
:data:`FLUSH_EVERY` results that it has processed those files
(:class:`~workers.messages.Progress`), so the supervisor sends it the next
ones while their reports wait. (Handing every group to the thread cost about
40 µs of CPU per small file, in switches of the interpreter lock between the
two threads, where the barrier itself took 20 µs.) Either way reports leave
in the order they were made. The sender thread also takes reports that have
waited :data:`FLUSH_AFTER_S` by themselves, so the outcome of a step finished
before a long one is recorded while the long one runs (a worker death then
does not repeat it), and the watchdog hears of the long one's start.

If the files cannot be made durable (an I/O error of the disk), nothing that
claims them saved is sent: each held file's result becomes an error, so the
supervisor keeps its bytes for a retry and records no finished step.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from workers.durability import make_durable
from workers.messages import FileResult, MessageKind, Progress, Report, Reports, ResultStatus

FLUSH_AFTER_S = 0.02  # a report waits at most about this long (plus the file in progress) for the next ones
FLUSH_EVERY = 8  # results sent together (or said processed) at most: the supervisor refills the worker meanwhile
QUICK_BARRIER_S = 0.0005  # barriers taking less than this (a moving average) are run by the worker itself
SLOW_GROUP = 32  # results per barrier when barriers are slow (each handover to the sender thread costs CPU)

_Group = tuple[list[Report], list[Path], bool]  # reports, files to make durable, whole file system allowed


class Outbox:
    """Reports for the files a worker finished, sent in groups after a durability barrier."""

    def __init__(self, send: Any, quick_barrier_s: float = QUICK_BARRIER_S) -> None:
        self._send = send
        self.quick_barrier_s = quick_barrier_s
        self.barrier_s = 0.0  # moving average of the barriers' wall time (unknown at first: taken as quick)
        self._order = threading.Lock()  # held from taking a group to sending it: reports leave in order
        self._queued = 0  # groups handed to the sender thread and not sent yet
        self._messages: list[Report] = []
        self._unsynced: list[Path] = []
        self._whole_fs = True
        self._since: float | None = None
        self._results = 0
        self._said = 0  # of the held results, how many the supervisor was told are processed
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # the pipe is written by this thread (progress) and the sender
        self._groups: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_groups, name="omsd-outbox", daemon=True)
        self._sender.start()
        self.error: BaseException | None = None  # the sender's failure to send (the supervisor is gone)

    def __bool__(self) -> bool:
        return bool(self._messages)

    def put(self, message: Report) -> None:
        """Hold one report (a step outcome or a result)."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
            self._messages.append(message)
            self._results += message.kind is MessageKind.RESULT

    def saved(self, paths: list[Path], *, whole_fs: bool = False) -> None:
        """Files written for the next reports: made durable before any report after this call is sent.

        ``whole_fs``: one syncfs may do it (see :func:`workers.durability.make_durable`); the group's
        barrier uses one only if every file of the group allows it."""
        with self._lock:
            self._unsynced.extend(paths)
            self._whole_fs = self._whole_fs and whole_fs

    def due(self) -> bool:
        """True when the held reports should go, or be said processed, now (even though more files are in hand)."""
        return self._results - self._said >= FLUSH_EVERY or (
            self._since is not None and time.monotonic() - self._since >= FLUSH_AFTER_S)

    def flush(self, idle: bool = False) -> None:
        """Make the held reports' files durable and send the reports: here, when barriers are quick, there
        is no file to wait for, or the worker is ``idle`` (has nothing more in hand); otherwise in the
        sender thread, once :data:`SLOW_GROUP` results (or a report :data:`FLUSH_AFTER_S` old) are held,
        and till then only say the files are processed."""
        self._flush(idle=idle, hold=not idle)

    def _flush(self, *, idle: bool, hold: bool) -> None:
        if self.error is not None:
            raise self.error
        if (idle or not self._unsynced or self.barrier_s < self.quick_barrier_s) \
                and self._order.acquire(blocking=False):
            try:
                if not self._queued:  # nothing older is still on its way through the thread
                    group = self._take(0.0)
                    if group is not None:
                        self._send_groups_now([group])
                    return
            finally:
                self._order.release()
        if hold and self._results < SLOW_GROUP and self._since is not None \
                and time.monotonic() - self._since < FLUSH_AFTER_S:
            self._say_processed()  # the group grows on: one slow barrier for more files
            return
        group = self._take(0.0)
        if group is None:
            return
        last = next((m.task_id for m in reversed(group[0]) if m.kind is MessageKind.RESULT), None)
        if last is not None and group[1]:  # results that will wait for a barrier: say they are processed
            self._deliver(Progress(task_id=last))
        with self._lock:
            self._queued += 1
        self._groups.put(group)

    def _say_processed(self) -> None:
        """Tell the supervisor the held results' files are processed (their reports wait for a barrier)."""
        with self._lock:
            last = next((m.task_id for m in reversed(self._messages) if m.kind is MessageKind.RESULT), None)
            fresh = self._results > self._said
            self._said = self._results
        if last is not None and fresh:
            self._deliver(Progress(task_id=last))

    def _deliver(self, message: Any) -> None:
        with self._send_lock:
            self._send(message)

    def _take(self, min_age_s: float) -> _Group | None:
        """The held reports and files, if any report has waited ``min_age_s``."""
        with self._lock:
            if not self._messages or time.monotonic() - (self._since or 0.0) < min_age_s:
                return None
            group = (self._messages, self._unsynced, self._whole_fs)
            self._messages, self._unsynced, self._since, self._results, self._said = [], [], None, 0, 0
            self._whole_fs = True
            return group

    def close(self, timeout: float = 30.0) -> None:
        """Hand everything held on, and wait until it was sent."""
        self._flush(idle=False, hold=False)
        self._groups.put(None)
        self._sender.join(timeout)

    def _send_groups(self) -> None:
        stop = False
        while not stop:
            try:
                groups = [self._groups.get(timeout=FLUSH_AFTER_S)]
            except queue.Empty:
                with self._order:  # the worker is busy with a long step
                    late = self._take(FLUSH_AFTER_S) if not self._queued else None
                    if late is not None and not self._send_groups_now([late]):
                        return
                continue
            while not self._groups.empty():  # everything waiting shares one barrier
                groups.append(self._groups.get())
            if groups[-1] is None:
                stop = True
                groups.pop()
            with self._order:
                sent = self._send_groups_now(groups)
                with self._lock:
                    self._queued -= len(groups)
            if not sent:
                return

    def _send_groups_now(self, groups: list[_Group]) -> bool:
        """One barrier for the groups' files, then their reports in one pipe write; False when the
        supervisor is gone (noted in :attr:`error`, which the worker's next flush raises)."""
        messages = [m for group in groups for m in group[0]]
        unsynced = [p for group in groups for p in group[1]]
        if unsynced:
            started = time.monotonic()
            try:
                make_durable(unsynced, whole_fs=all(group[2] for group in groups))
            except OSError as exc:
                messages = _failed(messages, f"saved files could not be made durable: {exc!r}")
            self.barrier_s = 0.8 * self.barrier_s + 0.2 * (time.monotonic() - started)
        messages = _without_finished_starts(messages)
        if not messages:  # only step reports, dropped because their files could not be made durable
            return True
        try:  # one pipe write for the whole group
            self._deliver(messages[0] if len(messages) == 1 else Reports(tuple(messages)))
        except (OSError, EOFError) as exc:  # the supervisor is gone; the worker notices at its next flush
            self.error = exc
            return False
        return True


def _without_finished_starts(messages: list[Report]) -> list[Report]:
    """The group without the announcements of attempts whose step finished in the same group: the
    supervisor's watchdog would start and stop timing them at once (one object fewer to pickle and
    to handle per step, most often all of them)."""
    finished = {(m.task_id, m.pipeline, m.index) for m in messages if m.kind is MessageKind.STEP}
    if not finished:
        return messages
    return [m for m in messages
            if m.kind is not MessageKind.STEP_STARTED or (m.task_id, m.pipeline, m.index) not in finished]


def _failed(messages: list[Report], error: str) -> list[Report]:
    """The held results turned into errors, without the step outcomes that would record saves."""
    return [FileResult(task_id=m.task_id, status=ResultStatus.ERROR, error=error)
            for m in messages if m.kind is MessageKind.RESULT]
