"""The worker's outbox: reports are sent only after the files saved for them were made durable."""

from __future__ import annotations

import os
import threading
import time

import workers.durability as durability
import workers.outbox as outbox_module
from workers.messages import FileResult, MessageKind, ResultStatus, StepFinished, StepStarted, StepStatus
from workers.outbox import Outbox


def step(task_id: int) -> StepFinished:
    return StepFinished(task_id=task_id, pipeline="p", index=0, step="save", status=StepStatus.DONE, attempts=1,
                        error=None, duration_s=0.01)


def result(task_id: int) -> FileResult:
    return FileResult(task_id=task_id, status=ResultStatus.OK, pipelines={"p": True}, duration_s=0.01)


def _unpack(message) -> list:
    return list(message.reports) if message.kind is MessageKind.REPORTS else [message]


def _collect(events: list, lock: threading.Lock, writes: list | None = None):
    def send(message) -> None:
        with lock:
            if writes is not None:
                writes.append(message.kind)
            events.extend(("sent", m.task_id, m.kind.value) for m in _unpack(message))
    return send


def test_files_are_made_durable_before_their_reports_are_sent(monkeypatch, tmp_path) -> None:
    events: list = []
    lock = threading.Lock()

    def durable(paths, whole_fs=False):
        with lock:
            events.append(("durable", sorted(os.path.basename(p) for p in paths)))
        return len(paths)

    monkeypatch.setattr(outbox_module, "make_durable", durable)
    writes: list = []
    box = Outbox(_collect(events, lock, writes), quick_barrier_s=0.0)  # barriers taken as slow: the thread runs them
    for task_id in (1, 2):
        box.saved([tmp_path / f"f{task_id}"])
        box.put(step(task_id))
        box.put(result(task_id))
    box.close()
    assert events[0] == ("sent", 2, "progress")  # at once: the supervisor may send the next files
    assert events[1] == ("durable", ["f1", "f2"])  # one barrier for the group, before any report is sent
    assert events[2:] == [("sent", 1, "step"), ("sent", 1, "result"), ("sent", 2, "step"), ("sent", 2, "result")]
    assert writes == [MessageKind.PROGRESS, MessageKind.REPORTS]  # the whole group in one message: one pipe write


def test_progress_is_said_only_for_results_that_wait_for_a_barrier(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(outbox_module, "make_durable", lambda paths, whole_fs=False: len(paths))
    sent: list = []
    box = Outbox(sent.append, quick_barrier_s=0.0)
    box.put(result(1))  # nothing saved: sent at once, no progress needed
    box.flush()
    box.saved([tmp_path / "f"])
    box.put(step(2))  # a step report alone: no file is processed yet
    box.flush()
    box.close()
    assert MessageKind.PROGRESS not in [m.kind for m in sent]


def test_a_failed_barrier_turns_the_results_into_errors_and_drops_the_step_reports(monkeypatch, tmp_path) -> None:
    sent: list = []

    def broken(_paths, whole_fs=False):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(outbox_module, "make_durable", broken)
    box = Outbox(sent.append, quick_barrier_s=0.0)
    box.saved([tmp_path / "f"])
    box.put(step(3))
    box.put(result(3))
    box.close()
    assert [(m.kind, m.task_id) for m in sent] == [(MessageKind.PROGRESS, 3), (MessageKind.RESULT, 3)]
    assert sent[1].status is ResultStatus.ERROR and "could not be made durable" in sent[1].error


def test_a_report_held_while_the_worker_is_busy_is_sent_by_itself(monkeypatch) -> None:
    monkeypatch.setattr(outbox_module, "FLUSH_AFTER_S", 0.01)
    sent: list = []
    box = Outbox(sent.append)
    box.put(step(4))  # then the worker runs a long step and does not flush
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [m.task_id for m in sent] == [4]
    box.close()


def test_an_attempt_announced_and_finished_in_one_group_is_not_announced(monkeypatch) -> None:
    monkeypatch.setattr(outbox_module, "FLUSH_AFTER_S", 0.01)
    sent: list = []
    box = Outbox(sent.append)

    def started(task_id: int, index: int = 0) -> StepStarted:
        return StepStarted(task_id=task_id, pipeline="p", index=index, step="save", attempt=1, limit_s=None)

    # File 1's step started and finished; file 2's second step is still running when the group goes.
    for message in (started(1), step(1), result(1), started(2), step(2), started(2, index=1)):
        box.put(message)
    box.flush()
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.005)
    reports = [m for message in sent for m in _unpack(message)]
    assert [(m.kind, m.task_id, getattr(m, "index", None)) for m in reports] == [
        (MessageKind.STEP, 1, 0), (MessageKind.RESULT, 1, None), (MessageKind.STEP, 2, 0),
        (MessageKind.STEP_STARTED, 2, 1)]  # the watchdog still times the step that goes on
    box.close()


def test_due_after_enough_results() -> None:
    box = Outbox(lambda _m: None)
    for task_id in range(outbox_module.FLUSH_EVERY - 1):
        box.put(result(task_id))
    assert not box.due()
    box.put(result(99))
    assert box.due()
    box.close()


def test_make_durable_syncs_files_and_directories(monkeypatch, tmp_path) -> None:
    synced: list = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(durability.os, "fsync", counting)
    (tmp_path / "d").mkdir()
    for name in ("a", "b"):
        (tmp_path / "d" / name).write_bytes(b"x")
    assert durability.make_durable([tmp_path / "d" / "a", tmp_path / "d" / "b", tmp_path / "d" / "gone"]) == 3
    assert synced == ["a", "b", "d"]  # each file, then the directory once; a file gone since is skipped


def test_a_group_of_files_on_one_file_system_is_made_durable_by_one_syncfs_when_allowed(monkeypatch, tmp_path) -> None:
    calls: list = []
    real_syncfs = durability._syncfs
    monkeypatch.setattr(durability, "_syncfs", lambda d: calls.append(("syncfs", d)) or real_syncfs(d))
    monkeypatch.setattr(durability, "_fsync_each", lambda paths: calls.append(("fsync", len(paths))))
    (tmp_path / "d").mkdir()
    files = [tmp_path / "d" / f"f{i}" for i in range(durability.SYNCFS_FROM)]
    for path in files:
        path.write_bytes(b"x")
    assert durability.make_durable(files, whole_fs=True) == len(files)
    assert calls == [("syncfs", str(tmp_path / "d"))]  # one call for the group (and it really ran)
    calls.clear()
    durability.make_durable(files)  # not allowed: a spill file may be waiting there
    durability.make_durable(files[:-1], whole_fs=True)  # too few to be worth it
    assert calls == [("fsync", len(files)), ("fsync", len(files) - 1)]


def test_one_file_that_forbids_syncfs_makes_its_group_fsync_each_file(monkeypatch, tmp_path) -> None:
    seen: list = []
    monkeypatch.setattr(outbox_module, "make_durable", lambda paths, whole_fs: seen.append((len(paths), whole_fs)))
    box = Outbox(lambda _m: None)
    box.saved([tmp_path / "a"], whole_fs=True)
    box.saved([tmp_path / "b"], whole_fs=False)  # handed out while a spill file was in use
    box.put(result(1))
    box.close()
    box = Outbox(lambda _m: None)
    box.saved([tmp_path / "c", tmp_path / "d"], whole_fs=True)
    box.put(result(2))
    box.close()
    assert seen == [(2, False), (2, True)]


def test_a_group_left_with_nothing_to_send_sends_no_message(monkeypatch, tmp_path) -> None:
    """A failed barrier under step reports alone leaves nothing to send, and so does a stop with nothing
    held: no empty message goes to the supervisor, and the sender carries on (and ends) without an error."""
    crashed: list = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    barriers: list = []

    def durable(_paths, whole_fs=False):
        barriers.append(len(barriers))
        if len(barriers) == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(outbox_module, "make_durable", durable)
    sent: list = []
    box = Outbox(sent.append, quick_barrier_s=0.0)
    box.saved([tmp_path / "f"])
    box.put(step(5))  # a long step runs on; its report goes alone, and its barrier fails
    box.flush()
    deadline = time.monotonic() + 5
    while not barriers and time.monotonic() < deadline:  # that group's barrier has run (and failed)
        time.sleep(0.005)
    time.sleep(0.05)  # and whatever the sender does after it is done
    box.saved([tmp_path / "g"])
    box.put(result(6))
    box.close()
    assert [(m.kind, m.task_id) for m in sent] == [(MessageKind.PROGRESS, 6), (MessageKind.RESULT, 6)]
    empty = Outbox(sent.append)
    empty.close()  # nothing held at stop
    assert len(sent) == 2 and crashed == [] and box.error is None and empty.error is None


def test_quick_barriers_are_run_by_the_worker_itself_and_slow_ones_by_the_sender(monkeypatch, tmp_path) -> None:
    """Where barriers are quick the worker runs them between two files (no thread, no progress message);
    once they turn slow, the next groups go to the sender thread, so the worker goes on meanwhile."""
    barriers: list = []
    slow = threading.Event()

    def durable(paths, whole_fs=False):
        barriers.append(threading.current_thread() is threading.main_thread())
        if slow.is_set():
            time.sleep(0.02)
        return len(paths)

    monkeypatch.setattr(outbox_module, "make_durable", durable)
    sent: list = []
    box = Outbox(sent.append, quick_barrier_s=0.002)
    for task_id in (1, 2):
        box.saved([tmp_path / f"f{task_id}"])
        box.put(result(task_id))
        box.flush()
    assert barriers == [True, True] and [(m.kind, m.task_id) for m in sent] == [
        (MessageKind.RESULT, 1), (MessageKind.RESULT, 2)]  # sent at once, from here
    slow.set()
    for task_id in (3, 4, 5):
        box.saved([tmp_path / f"f{task_id}"])
        box.put(result(task_id))
        box.flush()
    box.close()
    assert barriers[2] is True and False in barriers[3:]  # measured slow here: the later ones in the thread
    reports = [(m.kind, m.task_id) for message in sent for m in _unpack(message)]
    assert [r for r in reports if r[0] is MessageKind.RESULT] == [(MessageKind.RESULT, i) for i in range(1, 6)]
    assert (MessageKind.PROGRESS, 4) in reports  # a result waiting for the thread's barrier


def test_an_idle_worker_runs_even_a_slow_barrier_itself(monkeypatch, tmp_path) -> None:
    threads: list = []
    monkeypatch.setattr(outbox_module, "make_durable",
                        lambda paths, whole_fs=False: threads.append(threading.current_thread()) or len(paths))
    sent: list = []
    box = Outbox(sent.append, quick_barrier_s=0.0)  # every barrier taken as slow
    box.saved([tmp_path / "f"])
    box.put(result(7))
    box.flush(idle=True)  # nothing more in hand: no reason to hand the wait to the thread
    assert threads == [threading.main_thread()] and [(m.kind, m.task_id) for m in sent] == [(MessageKind.RESULT, 7)]
    box.close()


def test_reports_never_overtake_a_group_still_in_the_senders_barrier(monkeypatch, tmp_path) -> None:
    release = threading.Event()
    calls: list = []

    def durable(paths, whole_fs=False):
        calls.append(len(calls))
        if len(calls) == 1:
            release.wait(5)  # the thread's barrier of group 1 is slow
        return len(paths)

    monkeypatch.setattr(outbox_module, "make_durable", durable)
    sent: list = []
    box = Outbox(sent.append, quick_barrier_s=0.0)
    box.saved([tmp_path / "a"])
    box.put(result(1))
    box.flush()  # to the thread, which waits in the barrier
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.002)
    box.quick_barrier_s = 1.0  # barriers now taken as quick: the next flush would run here...
    box.saved([tmp_path / "b"])
    box.put(result(2))
    box.flush(idle=True)  # ...but group 1 is still on its way: group 2 queues behind it
    release.set()
    box.close()
    results = [m.task_id for message in sent for m in _unpack(message) if m.kind is MessageKind.RESULT]
    assert results == [1, 2]


def test_slow_barriers_cover_larger_groups_and_files_are_said_processed_meanwhile(monkeypatch, tmp_path) -> None:
    barriers: list = []
    monkeypatch.setattr(outbox_module, "FLUSH_AFTER_S", 10.0)  # no group goes for its age in this test
    monkeypatch.setattr(outbox_module, "make_durable", lambda paths, whole_fs=False: barriers.append(len(paths)))
    sent: list = []
    box = Outbox(sent.append, quick_barrier_s=0.0)  # every barrier taken as slow
    task_id = 0
    for _batch in range(outbox_module.SLOW_GROUP // outbox_module.FLUSH_EVERY):
        for _ in range(outbox_module.FLUSH_EVERY):
            task_id += 1
            box.saved([tmp_path / f"f{task_id}"])
            box.put(result(task_id))
        assert box.due()
        box.flush()  # as the worker does when due
        assert not box.due()
    box.close()
    kinds = [(m.kind, m.task_id) for message in sent for m in _unpack(message)]
    progress = [t for k, t in kinds if k is MessageKind.PROGRESS]
    assert progress[:3] == [8, 16, 24]  # said processed every FLUSH_EVERY results, while the group grew
    assert barriers == [outbox_module.SLOW_GROUP]  # one barrier for the whole group
    assert [t for k, t in kinds if k is MessageKind.RESULT] == list(range(1, task_id + 1))
