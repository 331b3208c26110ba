"""The worker pool: numbered slots of spawned worker processes.

Completed files wait in a :class:`~omsd.dispatch.queue.DispatchQueue`, which
says which file a slot takes next: by default any slot with room takes the
oldest file whose path has nothing in flight elsewhere (``balanced``), or
only files whose path hashes to it (``sharded``); either way two generations
of one path never run at once and run in order. A slot's worker works through
its tasks one at a time; when files are cheap (the recent mean time per file
is well under :data:`AHEAD_S`) it is sent several ahead, so that it never
waits for the supervisor between them and can make their saves durable
together. Files the worker reports processed (``Progress``) while their
durability barrier runs no longer count as sent ahead: it is sent the next
ones meanwhile (at most :data:`MAX_HELD` in all). A slot whose process dies
is restarted with backoff and its in-flight tasks wait again in their arrival
order; the one it was working on (the first it had not processed) counts a
death, and after ``poison_limit`` deaths is handed back as poison. A worker
killed by the step watchdog (:mod:`omsd.dispatch.watchdog`) is replaced
at once; its task is handed back as timed out (:meth:`WorkerPool.take_timed_out`),
not as a death.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from omsd.dispatch.backpressure import Backlog
from omsd.dispatch.queue import DispatchPolicy, DispatchQueue
from omsd.dispatch.watchdog import StepRun, watch
from omsd.exitcodes import RET_WORKER_BOOT
from omsd.states import ProcessState, transition
from workers.main import worker_main
from workers.messages import FileTask, FromWorker, MessageKind, Progress, Report, Stop, Tasks

log = structlog.get_logger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a worker alive this long resets its slot's backoff
AHEAD_S = 0.02  # files worth about this much work are sent to a worker ahead of the one it works on
MAX_IN_FLIGHT = 32  # and never more than this many
MAX_HELD = 8 * MAX_IN_FLIGHT  # files a worker holds at most, counting those processed and waiting for durability


@dataclass
class Task:
    """One completed file on its way through a worker."""

    task_id: int
    relative_path: str
    message: FileTask  # what the worker receives
    size: int = 0  # staged bytes
    deaths: int = 0
    timeouts: dict[tuple[str, int], int] = field(default_factory=dict)  # (pipeline, step index) → attempts killed
    not_before: float = 0.0  # time.monotonic() before which it is not handed out (backoff after a time-out)


@dataclass
class Slot:
    """One numbered place for a worker process; its state changes only through :meth:`move_to`."""

    index: int
    _state: ProcessState = field(default=ProcessState.STOPPED, repr=False)
    process: Any = None
    conn: Any = None
    in_flight: deque[Task] = field(default_factory=deque)  # sent to the worker, in order, until their results
    processed: int = 0  # the first this many of in_flight are processed; their results wait for durability
    head_since: float = 0.0  # when the worker's current file (the first not processed) became current
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff_s: float = BACKOFF_START_S
    restarts: int = 0
    files_done: int = 0
    boot_failures: int = 0
    last_death: float | None = None
    step: StepRun | None = None  # the attempt at a step the worker is running (see omsd.dispatch.watchdog)
    killed: StepRun | None = None  # the attempt whose worker the watchdog killed, until reaped
    last_timeout: tuple[float, StepRun] | None = None  # when and why the watchdog last killed this slot's worker

    @property
    def state(self) -> ProcessState:
        return self._state

    def move_to(self, new: ProcessState) -> None:
        """Change state through the transition table (see :func:`omsd.states.transition`)."""
        self._state = transition(self._state, new, f"worker slot {self.index}")

    @property
    def current(self) -> Task | None:
        """The task the worker is working on (the oldest one sent and not processed)."""
        return self.in_flight[self.processed] if self.processed < len(self.in_flight) else None

    @property
    def ahead(self) -> int:
        """Tasks sent to the worker and not processed yet (the current one included)."""
        return len(self.in_flight) - self.processed

    def describe(self, now: float | None = None, waiting_home: int = 0) -> dict:
        """``waiting_home``: files waiting whose home this slot is (any slot may take them when balanced)."""
        running = self.step.describe(time.monotonic() if now is None else now) if self.step else {
            "step": None, "attempt": None, "step_running_s": None, "step_limit_s": None}
        return {"slot": self.index, "pid": self.process.pid if self.process else None, "state": self.state.value,
                "current_file": self.step.relative_path if self.step else
                self.current.relative_path if self.current else None, **running,
                "queued": waiting_home + max(0, self.ahead - 1),
                "files_done": self.files_done, "restarts": self.restarts}


class WorkerBootError(RuntimeError):
    """Workers cannot start at all (e.g. a step's code fails to import); restarting will not help."""


class WorkerPool:
    """Spawns, feeds, reaps and restarts the worker processes."""

    def __init__(self, size: int, pipelines: list[dict], *, log_json: bool | None = None, poison_limit: int = 3,
                 start_method: str = "spawn", policy: DispatchPolicy = DispatchPolicy.BALANCED) -> None:
        self.ctx = multiprocessing.get_context(start_method)
        self.pipelines = pipelines
        self.log_json = log_json
        self.poison_limit = poison_limit
        self.slots = [Slot(i) for i in range(size)]
        self.waiting = DispatchQueue(size, policy)  # completed files no worker holds yet
        self.handed_back: list[Task] = []  # waiting again after their worker died (see reap)
        self.mean_task_s: float | None = None  # moving average of the workers' time per file
        self.timed_out: list[tuple[Task, StepRun]] = []  # handed back by reap() after a watchdog kill

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=worker_main, name=f"omsd-worker-{slot.index}",
                                   args=(slot.index, child, self.pipelines, self.log_json), daemon=True)
        # Block signals while spawning so the child never runs the supervisor's handlers.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child.close()
        slot.process, slot.conn = process, parent
        slot.move_to(ProcessState.STARTING)
        slot.started_at = time.monotonic()

    def stop(self, timeout: float) -> None:
        """Ask every worker to exit after its current task; terminate the ones that do not."""
        for slot in self.slots:
            if slot.conn is not None and slot.state in (ProcessState.RUNNING, ProcessState.STARTING):
                try:
                    slot.conn.send(Stop())
                except OSError:
                    pass
                slot.move_to(ProcessState.STOPPING)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.process is None:
                continue
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join(2)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            if slot.state is not ProcessState.STOPPED:
                slot.move_to(ProcessState.STOPPED)
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None

    # -- work ------------------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        self.waiting.push(task)

    def requeue(self, task: Task) -> None:
        """Hand a task out again in its arrival order, before later files (not before ``task.not_before``)."""
        self.waiting.push_back([task])

    def busy(self) -> bool:
        """True when a worker has a message ready for us."""
        return any(s.conn is not None and s.in_flight and s.conn.poll() for s in self.slots)

    def wait(self, timeout: float) -> None:
        """Sleep until a worker has something to say (or a worker exits), at most ``timeout``."""
        waitables = [s.conn for s in self.slots if s.conn is not None]
        waitables += [s.process.sentinel for s in self.slots if s.process is not None and s.process.is_alive()]
        if waitables:
            multiprocessing.connection.wait(waitables, timeout=timeout)
        else:
            time.sleep(timeout)

    def pending(self) -> int:
        return len(self.waiting) + sum(len(s.in_flight) for s in self.slots)

    def in_flight_limit(self) -> int:
        """How many tasks a worker may hold: one, or several when files take well under AHEAD_S each."""
        if self.mean_task_s is None:
            return 1
        return max(1, min(MAX_IN_FLIGHT, int(AHEAD_S / max(self.mean_task_s, 1e-6))))

    def backlog(self) -> Backlog:
        """Files running or waiting, per slot, and the staged size of every file not finished.

        A waiting file counts for its home slot when sharded; when balanced, any slot may take it, so
        the waiting files are shared out evenly.
        """
        n = len(self.slots)
        if self.waiting.policy is DispatchPolicy.SHARDED:
            waiting = self.waiting.waiting_by_home()
        else:
            total = len(self.waiting)
            waiting = [total // n + (1 if i < total % n else 0) for i in range(n)]
        size = sum(t.size for t in self.waiting) + sum(t.size for s in self.slots for t in s.in_flight)
        # Files processed and waiting for their durability barrier need no more worker time: they count in
        # the staged size, not in the queues.
        return Backlog(per_worker=tuple(s.ahead + w for s, w in zip(self.slots, waiting)), size_bytes=size,
                       in_flight=self.in_flight_limit())

    def dispatch(self) -> None:
        """Send running workers the files the queue gives them, up to :meth:`in_flight_limit` each.

        One file at a time: idle workers first, so that waiting files spread over them before any
        worker is sent files ahead; then the worker whose current file started last (a worker that is
        moving, rather than one stuck on a slow file).
        """
        limit = self.in_flight_limit()
        now = time.monotonic()
        # A worker whose current file has taken longer than AHEAD_S is sent nothing ahead: what waits
        # behind a slow file could not be taken by another worker.
        # Only files not processed yet count against the limit: those waiting for their durability barrier
        # keep nothing else from the worker (up to MAX_HELD in all).
        ready = [s for s in self.slots if s.state is ProcessState.RUNNING and s.ahead < limit
                 and len(s.in_flight) < MAX_HELD and (not s.ahead or now - s.head_since < AHEAD_S)]
        outgoing: dict[int, list[FileTask]] = {}
        while ready:
            ready.sort(key=lambda s: (bool(s.ahead), -s.head_since, s.ahead))
            slot = ready[0]
            task = self.waiting.take(slot.index, now)
            if task is None:
                ready.pop(0)
                continue
            if not slot.ahead:
                slot.head_since = now
            slot.in_flight.append(task)
            outgoing.setdefault(slot.index, []).append(task.message)
            if slot.ahead >= limit or len(slot.in_flight) >= MAX_HELD:
                ready.pop(0)
        for index, messages in outgoing.items():  # one pipe write per worker
            try:
                self.slots[index].conn.send(messages[0] if len(messages) == 1 else Tasks(tuple(messages)))
            except OSError:
                pass  # the worker died; reap() hands its tasks back

    def events(self, timeout: float = 0.0) -> list[tuple[Slot, Report]]:
        """Messages from workers (see :mod:`workers.messages`) with the slot that sent each.

        Never blocks longer than ``timeout``.
        """
        conns = {slot.conn: slot for slot in self.slots if slot.conn is not None
                 and slot.state in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING)}
        out: list[tuple[Slot, Report]] = []
        if not conns:
            return out
        for conn in multiprocessing.connection.wait(list(conns), timeout=timeout):
            slot = conns[conn]
            try:
                while conn.poll():
                    message: FromWorker = conn.recv()
                    for report in message.reports if message.kind is MessageKind.REPORTS else (message,):
                        self._take_report(slot, report, out)
            except (EOFError, OSError):
                pass  # reap() notices the exit
        return out

    def _take_report(self, slot: Slot, report: Report | Progress, out: list[tuple[Slot, Report]]) -> None:
        """Note what one report changes in the slot; pass it on unless it is the watchdog's or the
        dispatcher's alone (an attempt started; files processed)."""
        if report.kind is MessageKind.STEP_STARTED:
            slot.step = self._step_run(slot, report)
            return
        if report.kind is MessageKind.PROGRESS:
            done = next((i + 1 for i, t in enumerate(slot.in_flight) if t.task_id == report.task_id), 0)
            if done > slot.processed:
                slot.processed = done
                slot.head_since = time.monotonic()  # the worker is on to its next file
            return
        if report.kind in (MessageKind.STEP, MessageKind.RESULT) and slot.step is not None \
                and slot.step.task_id == report.task_id:
            slot.step = None
        if report.kind is MessageKind.READY:
            slot.move_to(ProcessState.RUNNING)
        elif report.kind is MessageKind.RESULT and slot.in_flight:
            self.waiting.done(slot.in_flight.popleft())  # results come in the order tasks were sent
            if slot.processed:
                slot.processed -= 1  # known processed already: the current file did not change
            else:
                slot.head_since = time.monotonic()
            slot.files_done += 1
            self._observe(report.duration_s)
        out.append((slot, report))

    @staticmethod
    def _step_run(slot: Slot, message: Any) -> StepRun:
        path = next((t.relative_path for t in slot.in_flight if t.task_id == message.task_id), "?")
        return StepRun(task_id=message.task_id, relative_path=path, pipeline=message.pipeline, index=message.index,
                       step=message.step, attempt=message.attempt, limit_s=message.limit_s, started=time.monotonic())

    def watch(self) -> None:
        """Kill the workers of steps past their time limit (see :mod:`omsd.dispatch.watchdog`)."""
        watch(s for s in self.slots if s.state is ProcessState.RUNNING)

    def take_timed_out(self) -> list[tuple[Task, StepRun]]:
        """Tasks whose worker the watchdog killed, with the attempt that ran too long (each once)."""
        out, self.timed_out = self.timed_out, []
        return out

    def _observe(self, duration_s: float | None) -> None:
        if duration_s is not None:
            self.mean_task_s = duration_s if self.mean_task_s is None else 0.9 * self.mean_task_s + 0.1 * duration_s

    def reap(self) -> list[Task]:
        """Notice dead workers; re-queue their tasks and return those that became poison."""
        poison: list[Task] = []
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None or slot.state in (ProcessState.BACKOFF, ProcessState.STOPPED,
                                                      ProcessState.FATAL, ProcessState.STOPPING):
                continue
            if slot.process.is_alive():
                if slot.state is ProcessState.RUNNING and now - slot.started_at > STABLE_AFTER_S:
                    slot.backoff_s = BACKOFF_START_S
                continue
            code = slot.process.exitcode
            slot.conn.close()
            slot.conn = None
            booted = slot.state is ProcessState.RUNNING
            task = slot.current  # the one it was working on; the others it had not started (or not reported)
            if not booted and code == RET_WORKER_BOOT:
                slot.boot_failures += 1
            handed_back = list(slot.in_flight)
            slot.in_flight.clear()
            slot.processed = 0
            killed, slot.killed, slot.step = slot.killed, None, None
            timed_out = next((t for t in handed_back if killed is not None and t.task_id == killed.task_id), None)
            if timed_out is not None:  # the watchdog's kill: not a death of the slot, nor the file's
                handed_back.remove(timed_out)
                self.waiting.release(timed_out)  # no longer in flight; requeue() hands it out again
                self.timed_out.append((timed_out, killed))
                slot.last_timeout = (now, killed)
            else:
                log.error("worker died", slot=slot.index, pid=slot.process.pid, exitcode=code,
                          file=task.relative_path if task else None)
                if task is not None:
                    task.deaths += 1
                    if task.deaths >= self.poison_limit:
                        handed_back.remove(task)
                        poison.append(task)
                        self.waiting.done(task)
            self.waiting.push_back(handed_back)
            self.handed_back.extend(handed_back)
            if booted:
                slot.move_to(ProcessState.EXITED)  # a running worker died; died while booting goes straight on
            slot.move_to(ProcessState.BACKOFF)  # wait before the restart
            if timed_out is not None:
                slot.restart_at = now  # replaced at once
                continue
            slot.last_death = now
            slot.restart_at = now + slot.backoff_s
            slot.backoff_s = min(BACKOFF_MAX_S, slot.backoff_s * 2)
        return poison

    def manage(self) -> None:
        """Restart slots whose backoff has elapsed; give up on workers that cannot boot."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.state is ProcessState.BACKOFF and now >= slot.restart_at:
                if slot.boot_failures >= 3:
                    slot.move_to(ProcessState.FATAL)
                    raise WorkerBootError(f"worker slot {slot.index} failed to boot {slot.boot_failures} times")
                slot.restarts += 1
                self._spawn(slot)

    def alive(self) -> bool:
        return all(s.state is ProcessState.RUNNING for s in self.slots)

    def take_handed_back(self) -> list[Task]:
        """The tasks re-queued after a worker death since the last call."""
        out, self.handed_back = self.handed_back, []
        return out

    def describe(self) -> list[dict]:
        now = time.monotonic()
        homes = self.waiting.waiting_by_home()
        return [slot.describe(now, homes[slot.index]) for slot in self.slots]
