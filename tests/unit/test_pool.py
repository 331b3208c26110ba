"""The worker pool: slots move only along the state table (strict in tests: a forbidden move raises), and
files handed out together travel together."""

from __future__ import annotations

import hashlib
import multiprocessing
import time

from omsd.dispatch.pool import Task, WorkerPool
from omsd.states import ProcessState
from workers.messages import FileMeta, FileResult, FileTask, MessageKind, Progress, Reports, ResultStatus


def wait_running(pool: WorkerPool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pool.alive():
        assert time.monotonic() < deadline, pool.describe()
        pool.events(timeout=0.1)


def test_a_running_worker_that_dies_is_exited_then_backs_off_then_restarts() -> None:
    pool = WorkerPool(1, [])
    (slot,) = pool.slots
    assert slot.state is ProcessState.STOPPED
    pool.start()
    try:
        assert slot.state is ProcessState.STARTING
        wait_running(pool)
        slot.process.kill()
        slot.process.join(10)
        assert pool.reap() == []  # RUNNING -> EXITED -> BACKOFF (RUNNING -> BACKOFF would raise here)
        assert slot.state is ProcessState.BACKOFF and slot.last_death is not None
        slot.restart_at = 0.0
        pool.manage()
        assert slot.state is ProcessState.STARTING and slot.restarts == 1
        wait_running(pool)
    finally:
        pool.stop(timeout=5)
    assert slot.state is ProcessState.STOPPED and not slot.process.is_alive()


class _CountingConn:
    """A worker's pipe end that counts the messages sent through it (everything else passes through)."""

    def __init__(self, conn) -> None:
        self.conn, self.sent = conn, []

    def send(self, message) -> None:
        self.sent.append(message.kind)
        self.conn.send(message)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_files_handed_out_together_go_in_one_message_and_come_back_in_order(tmp_path) -> None:
    out = tmp_path / "out"
    pool = WorkerPool(1, [{"name": "p", "topic": "t", "steps": [("save", {"dir": str(out)})], "retries": 0}])
    pool.start()
    try:
        wait_running(pool)
        (slot,) = pool.slots
        slot.conn = counting = _CountingConn(slot.conn)
        pool.mean_task_s = 0.001  # files this quick are handed out several at a time
        contents = {f"run/f{i}.dat": f"file {i}".encode() * 100 for i in range(5)}
        for task_id, (rel, data) in enumerate(contents.items(), start=1):
            staged = tmp_path / f"staged{task_id}"
            staged.write_bytes(data)
            meta = FileMeta(relative_path=rel, subdir_str="run", filename=rel.split("/")[1],
                            file_hash=hashlib.sha512(data).digest(), file_mtime=None, topic="t")
            pool.submit(Task(task_id=task_id, relative_path=rel, size=len(data), message=FileTask(
                task_id=task_id, path=str(staged), size=len(data), file=meta, pipelines=("p",), done={})))
        pool.dispatch()
        assert counting.sent == [MessageKind.TASKS]  # five files, one pipe write
        results, deadline = [], time.monotonic() + 30
        while len(results) < 5 and time.monotonic() < deadline:
            results += [m.task_id for _slot, m in pool.events(timeout=0.2) if m.kind is MessageKind.RESULT]
        assert results == [1, 2, 3, 4, 5]
        assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.dat")} == contents
    finally:
        pool.stop(timeout=5)


def _quick_tasks(pool: WorkerPool, tmp_path, n: int) -> dict[int, Task]:
    tasks = {}
    for task_id in range(1, n + 1):
        rel = f"run/f{task_id}.dat"
        meta = FileMeta(relative_path=rel, subdir_str="run", filename=f"f{task_id}.dat", file_hash=b"\0" * 64,
                        file_mtime=None, topic="t")
        tasks[task_id] = Task(task_id=task_id, relative_path=rel, size=1, message=FileTask(
            task_id=task_id, path=str(tmp_path / "staged"), size=1, file=meta, pipelines=("p",), done={}))
        pool.submit(tasks[task_id])
    return tasks


def _sent_ids(worker_end) -> list[int]:
    ids = []
    while worker_end.poll(0.2):
        message = worker_end.recv()
        ids += [t.task_id for t in (message.tasks if message.kind is MessageKind.TASKS else (message,))]
    return ids


def test_files_processed_and_waiting_for_their_barrier_do_not_hold_the_next_ones_back(tmp_path) -> None:
    """The worker says it processed files (Progress) before their durability barrier ends: only the files it
    has not processed count against what it may hold ahead, and a death is counted for its current file."""
    pool = WorkerPool(1, [])
    pool.start()
    try:
        wait_running(pool)
        (slot,) = pool.slots
        slot.conn, worker_end = multiprocessing.Pipe()  # this test plays the worker
        pool.mean_task_s = 0.001
        limit = pool.in_flight_limit()
        tasks = _quick_tasks(pool, tmp_path, 3 * limit)
        pool.dispatch()
        assert _sent_ids(worker_end) == list(range(1, limit + 1))
        pool.dispatch()
        assert _sent_ids(worker_end) == []  # nothing processed yet: nothing more
        worker_end.send(Progress(task_id=limit))  # all processed; their barrier still runs
        assert pool.events(timeout=5) == []  # the dispatcher's alone: not passed on
        assert slot.processed == limit and slot.ahead == 0 and slot.current is None
        pool.dispatch()
        assert _sent_ids(worker_end) == list(range(limit + 1, 2 * limit + 1))
        assert slot.current is tasks[limit + 1] and slot.ahead == limit
        worker_end.send(Reports(tuple(FileResult(task_id=i, status=ResultStatus.OK) for i in range(1, limit + 1))))
        assert [m.task_id for _s, m in pool.events(timeout=5)] == list(range(1, limit + 1))
        assert slot.processed == 0 and slot.current is tasks[limit + 1]
        worker_end.send(Progress(task_id=limit + 2))
        pool.events(timeout=5)
        assert slot.current is tasks[limit + 3]
        slot.process.kill()
        slot.process.join(10)
        pool.reap()
        assert tasks[limit + 3].deaths == 1  # the file it was working on
        assert tasks[limit + 1].deaths == tasks[limit + 2].deaths == 0  # processed, waiting for durability
        assert slot.processed == 0 and not slot.in_flight
    finally:
        pool.stop(timeout=5)
