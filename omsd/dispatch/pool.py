"""The worker pool: numbered slots of spawned worker processes.

A completed file goes to the slot its path hashes to, so one path is always
handled by one worker, in order. Each slot runs one task at a time; a slot
whose process dies is restarted with backoff and its in-flight task goes
back to the front of its queue, unless that task has now killed workers
``poison_limit`` times (then it is handed back as poison).
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
from omsd.exitcodes import RET_WORKER_BOOT
from omsd.wire.sharding import worker_slot_for
from omsd.states import ProcessState
from workers.main import worker_main

log = structlog.get_logger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a worker alive this long resets its slot's backoff


@dataclass
class Task:
    """One completed file on its way through a worker."""

    task_id: int
    relative_path: str
    payload: dict  # what the worker receives
    size: int = 0  # staged bytes
    deaths: int = 0


@dataclass
class Slot:
    index: int
    state: ProcessState = ProcessState.STOPPED
    process: Any = None
    conn: Any = None
    queue: deque[Task] = field(default_factory=deque)
    current: Task | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff_s: float = BACKOFF_START_S
    restarts: int = 0
    files_done: int = 0
    boot_failures: int = 0
    last_death: float | None = None

    def describe(self) -> dict:
        return {"slot": self.index, "pid": self.process.pid if self.process else None, "state": self.state.value,
                "current_file": self.current.relative_path if self.current else None, "queued": len(self.queue),
                "files_done": self.files_done, "restarts": self.restarts}


class WorkerBootError(RuntimeError):
    """Workers cannot start at all (e.g. a step's code fails to import); restarting will not help."""


class WorkerPool:
    """Spawns, feeds, reaps and restarts the worker processes."""

    def __init__(self, size: int, pipelines: list[dict], *, log_json: bool | None = None, poison_limit: int = 3,
                 start_method: str = "spawn") -> None:
        self.ctx = multiprocessing.get_context(start_method)
        self.pipelines = pipelines
        self.log_json = log_json
        self.poison_limit = poison_limit
        self.slots = [Slot(i) for i in range(size)]

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
        slot.state = ProcessState.STARTING
        slot.started_at = time.monotonic()

    def stop(self, timeout: float) -> None:
        """Ask every worker to exit after its current task; terminate the ones that do not."""
        for slot in self.slots:
            if slot.conn is not None and slot.state in (ProcessState.RUNNING, ProcessState.STARTING):
                try:
                    slot.conn.send(None)
                except OSError:
                    pass
                slot.state = ProcessState.STOPPING
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
            slot.state = ProcessState.STOPPED
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None

    # -- work ------------------------------------------------------------------------------------
    def slot_for(self, relative_path: str) -> Slot:
        return self.slots[worker_slot_for(relative_path, len(self.slots))]

    def submit(self, task: Task) -> None:
        self.slot_for(task.relative_path).queue.append(task)

    def busy(self) -> bool:
        """True when a worker has a message ready for us."""
        return any(s.conn is not None and s.current is not None and s.conn.poll() for s in self.slots)

    def wait(self, timeout: float) -> None:
        """Sleep until a worker has something to say (or a worker exits), at most ``timeout``."""
        waitables = [s.conn for s in self.slots if s.conn is not None]
        waitables += [s.process.sentinel for s in self.slots if s.process is not None and s.process.is_alive()]
        if waitables:
            multiprocessing.connection.wait(waitables, timeout=timeout)
        else:
            time.sleep(timeout)

    def pending(self) -> int:
        return sum(len(s.queue) + (1 if s.current else 0) for s in self.slots)

    def backlog(self) -> Backlog:
        """Files running or waiting, per slot, and their staged size."""
        tasks = [[*s.queue, *([s.current] if s.current else [])] for s in self.slots]
        return Backlog(per_worker=tuple(len(t) for t in tasks), size_bytes=sum(t.size for ts in tasks for t in ts))

    def dispatch(self) -> None:
        """Give each idle, running worker the next task of its slot."""
        for slot in self.slots:
            if slot.state is ProcessState.RUNNING and slot.current is None and slot.queue:
                task = slot.queue.popleft()
                slot.current = task
                try:
                    slot.conn.send(task.payload)
                except OSError:
                    pass  # the worker died; reap() hands the task back

    def events(self, timeout: float = 0.0) -> list[tuple[Slot, dict, Task | None]]:
        """Messages from workers (ready, step, result) with the task they concern.

        Never blocks longer than ``timeout``.
        """
        conns = {slot.conn: slot for slot in self.slots if slot.conn is not None
                 and slot.state in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING)}
        out: list[tuple[Slot, dict, Task | None]] = []
        if not conns:
            return out
        for conn in multiprocessing.connection.wait(list(conns), timeout=timeout):
            slot = conns[conn]
            try:
                while conn.poll():
                    message = conn.recv()
                    task = slot.current
                    if message.get("type") == "ready":
                        slot.state = ProcessState.RUNNING
                    elif message.get("type") == "result":
                        slot.current = None
                        slot.files_done += 1
                    out.append((slot, message, task))
            except (EOFError, OSError):
                pass  # reap() notices the exit
        return out

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
            task, slot.current = slot.current, None
            if not booted and code == RET_WORKER_BOOT:
                slot.boot_failures += 1
            log.error("worker died", slot=slot.index, pid=slot.process.pid, exitcode=code,
                      file=task.relative_path if task else None)
            if task is not None:
                task.deaths += 1
                if task.deaths >= self.poison_limit:
                    poison.append(task)
                else:
                    slot.queue.appendleft(task)
            slot.state = ProcessState.BACKOFF
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
                    slot.state = ProcessState.FATAL
                    raise WorkerBootError(f"worker slot {slot.index} failed to boot {slot.boot_failures} times")
                slot.restarts += 1
                self._spawn(slot)

    def alive(self) -> bool:
        return all(s.state is ProcessState.RUNNING for s in self.slots)

    def describe(self) -> list[dict]:
        return [slot.describe() for slot in self.slots]
