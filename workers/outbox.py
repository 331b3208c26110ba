"""A worker's reports, held back until the files they concern are durable.

The worker works through the files it holds (the supervisor may hand it
several ahead) and puts each report (step outcomes, the file's result) here.
:meth:`Outbox.flush` — called when the worker has nothing more in hand, when
:data:`FLUSH_EVERY` results or a report older than :data:`FLUSH_AFTER_S` are
held, and before the worker exits — passes the held reports, with the files
saved for them, to a sender thread. That thread makes the files durable
(:func:`workers.durability.make_durable`, once for every group that is
waiting) and then sends the reports, in order; meanwhile the worker goes
on with its next file. The sender also takes reports that have waited
:data:`FLUSH_AFTER_S` by itself, so the outcome of a step finished before a
long one is recorded while the long one runs (a worker death then does not
repeat it).

If the files cannot be made durable (an I/O error of the disk), nothing that
claims them saved is sent: each held file's result becomes an error, so the
supervisor keeps its bytes for a retry and records no finished step.

When a group holding results goes to the barrier, the worker says at once
that it has processed those files (:class:`~workers.messages.Progress`), so
the supervisor sends it the next ones while the barrier runs.
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
FLUSH_EVERY = 8  # results handed on together at most: the supervisor refills the worker while it works on

_Group = tuple[list[Report], list[Path], bool]  # reports, files to make durable, whole file system allowed


class Outbox:
    """Reports for the files a worker finished, sent in groups after a durability barrier."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._messages: list[Report] = []
        self._unsynced: list[Path] = []
        self._whole_fs = True
        self._since: float | None = None
        self._results = 0
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
        """True when the held reports should go now (even though more files are in hand)."""
        return self._results >= FLUSH_EVERY or (
            self._since is not None and time.monotonic() - self._since >= FLUSH_AFTER_S)

    def flush(self) -> None:
        """Hand every held report to the sender (which makes their files durable first)."""
        if self.error is not None:
            raise self.error
        group = self._take(0.0)
        if group is None:
            return
        last = next((m.task_id for m in reversed(group[0]) if m.kind is MessageKind.RESULT), None)
        if last is not None and group[1]:  # results that will wait for a barrier: say they are processed
            self._deliver(Progress(task_id=last))
        self._groups.put(group)

    def _deliver(self, message: Any) -> None:
        with self._send_lock:
            self._send(message)

    def _take(self, min_age_s: float) -> _Group | None:
        """The held reports and files, if any report has waited ``min_age_s``."""
        with self._lock:
            if not self._messages or time.monotonic() - (self._since or 0.0) < min_age_s:
                return None
            group = (self._messages, self._unsynced, self._whole_fs)
            self._messages, self._unsynced, self._since, self._results = [], [], None, 0
            self._whole_fs = True
            return group

    def close(self, timeout: float = 30.0) -> None:
        """Flush, and wait until everything handed on was sent."""
        self.flush()
        self._groups.put(None)
        self._sender.join(timeout)

    def _send_groups(self) -> None:
        stop = False
        while not stop:
            try:
                groups = [self._groups.get(timeout=FLUSH_AFTER_S)]
            except queue.Empty:
                late = self._take(FLUSH_AFTER_S)  # the worker is busy with a long step
                if late is None:
                    continue
                groups = [late]
            while not self._groups.empty():  # everything waiting shares one barrier
                groups.append(self._groups.get())
            if groups[-1] is None:
                stop = True
                groups.pop()
            messages = [m for group in groups for m in group[0]]
            unsynced = [p for group in groups for p in group[1]]
            if unsynced:
                try:
                    make_durable(unsynced, whole_fs=all(group[2] for group in groups))
                except OSError as exc:
                    messages = _failed(messages, f"saved files could not be made durable: {exc!r}")
            messages = _without_finished_starts(messages)
            if not messages:  # only step reports, dropped because their files could not be made durable
                continue
            try:  # one pipe write for the whole group
                self._deliver(messages[0] if len(messages) == 1 else Reports(tuple(messages)))
            except (OSError, EOFError) as exc:  # the supervisor is gone; the worker notices at its next flush
                self.error = exc
                return


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
