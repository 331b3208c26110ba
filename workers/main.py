"""Worker process entry point: verify each completed file and run its pipelines.

Started with the ``spawn`` method by the supervisor's pool; never imports
confluent_kafka. Talks to the supervisor over one duplex pipe, in the messages
of :mod:`workers.messages`: it receives :class:`FileTask` messages, alone or
several in one :class:`Tasks` (then :class:`Stop`), and answers :class:`Ready` once booted (:class:`BootFailed` if
it cannot build its pipelines), a :class:`StepFinished` after each finished
step and a :class:`FileResult` when a file is done.

The supervisor may send several tasks before the first is finished; they are
worked through in order. Reports are held while more tasks are waiting (at
most about :data:`workers.outbox.FLUSH_AFTER_S`), and sent only after the
files saved for them were made durable (:mod:`workers.outbox`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from omsd.exitcodes import RET_WORKER_BOOT
from workers.durability import make_durable
from workers.mapped import for_each_window
from workers.messages import (
    BootFailed, FileResult, FileTask, MessageKind, Produced, Ready, ResultStatus, StepFinished, StepStarted,
    StepStatus,
)
from workers.outbox import Outbox

BLOCK = 8 << 20
INLINE_HASH_MAX = 256 << 10  # files up to this size are hashed at once: faster than handing them to a thread
READ_HASH_MAX = 256 << 10  # files up to this size are read into memory to be hashed (cheaper than a mapping)


def file_sha512(path: str, size: int) -> bytes:
    """sha512 of the first ``size`` bytes of a staged file.

    A file of up to :data:`READ_HASH_MAX` bytes is read with one ``pread``: for
    small files that costs less than mapping and unmapping a window. Larger
    ones are hashed straight from read-only mappings, one window at a time (no
    copy into this process; the GIL is released while hashing).
    """
    if size <= READ_HASH_MAX:
        return hashlib.sha512(read_staged(path, size)).digest()  # shorter at the file's end: no match
    digest = hashlib.sha512()

    def visit(_offset: int, view: memoryview) -> None:
        for block in range(0, len(view), BLOCK):
            digest.update(view[block:block + BLOCK])

    with open(path, "rb", buffering=0) as handle:
        for_each_window(handle.fileno(), size, visit)
    return digest.digest()


def read_staged(path: str, size: int) -> bytes:
    """The first ``size`` bytes of a staged file, in one ``pread`` (fewer at the file's end)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def bad_chunks(path: str, chunks: Any) -> list[int]:
    """The chunk numbers whose staged bytes do not match their own sha512 (to name the bad messages)."""
    bad = []
    with open(path, "rb", buffering=0) as handle:
        for chunk_i, offset, length, digest in chunks:
            handle.seek(offset)
            if hashlib.sha512(handle.read(length)).digest() != digest:
                bad.append(chunk_i)
    return bad


def step_finished(task_id: int, outcome: Any) -> StepFinished:
    """The message for one of the pipeline's step outcomes."""
    return StepFinished(task_id=task_id, pipeline=outcome.pipeline, index=outcome.index, step=outcome.kind,
                        status=StepStatus(outcome.status), attempts=outcome.attempts, error=outcome.error,
                        duration_s=outcome.duration_s,
                        produced=tuple(Produced(m.topic, m.key, m.value) for m in outcome.messages))


def process(task: FileTask, runners: dict[str, Any], send: Any, saved: Any = None) -> FileResult:
    """Verify one staged file and run the requested pipelines on it; returns the result message.

    While a thread hashes a file larger than :data:`INLINE_HASH_MAX`, the pipelines' first steps may work ahead
    (``save`` writes its hidden temporary copy): the disk write then overlaps
    the hashing instead of following it. Nothing becomes visible before the
    hash matches; on a mismatch the prepared copies are removed.

    Step outcomes go to ``send`` as they happen; the files the steps wrote go to
    ``saved`` (a list of paths), which must make them durable before those outcomes
    are reported (the worker's :class:`~workers.outbox.Outbox`); without ``saved``
    they are made durable here, before this returns.
    """
    from workers.datafile import DataFile

    meta = task.file
    started = time.monotonic()
    datafile = DataFile(staged_path=task.path, size=task.size, subdir_str=meta.subdir_str,
                        filename=meta.filename, file_hash=meta.file_hash, file_mtime=meta.file_mtime,
                        topic=meta.topic, filename_append=meta.filename_append)
    content: bytes | None = None
    if task.size <= min(INLINE_HASH_MAX, READ_HASH_MAX):  # read once: hashed, then given to the steps
        content = read_staged(task.path, task.size)
        actual = hashlib.sha512(content).digest()
    elif task.size <= INLINE_HASH_MAX:
        actual = file_sha512(task.path, task.size)
    else:
        hashing = _hasher().submit(file_sha512, task.path, task.size)
        try:
            for name in task.pipelines:
                runners[name].prepare(datafile, task.done.get(name, ()))  # failures here are left to run()
        finally:
            wait([hashing])  # the next file must not start while this one is still being hashed
        try:
            actual = hashing.result()
        except BaseException:
            datafile.discard_prepared()
            raise
    if actual != meta.file_hash:
        datafile.discard_prepared()
        bad = bad_chunks(task.path, task.chunks)
        detail = f"chunks {bad} do not match their hashes" if bad else "every chunk matches its own hash"
        return FileResult(task_id=task.task_id, status=ResultStatus.HASH_MISMATCH, bad_chunks=tuple(bad),
                          error=f"whole-file sha512 mismatch ({task.size} bytes assembled; {detail})")
    if content is not None:
        datafile.hold_verified(content)  # steps read it, and save writes it, from memory
    results: dict[str, bool] = {}
    try:
        for name in task.pipelines:
            runner = runners[name]
            done = set(task.done.get(name, ()))

            def on_step(outcome: Any) -> None:
                written = datafile.take_unsynced()  # the step's files are made durable before it is reported
                if written:
                    (saved or make_durable)(written)
                send(step_finished(task.task_id, outcome))

            def on_attempt(index: int, step: Any, attempt: int, pipeline: str = name) -> None:
                send(StepStarted(task_id=task.task_id, pipeline=pipeline, index=index, step=step.kind,
                                 attempt=attempt, limit_s=step.watchdog_s))

            datafile.full_filepath = None
            results[name] = runner.run(datafile, done, on_step, on_attempt)
    finally:
        datafile.discard_prepared()  # copies a failed or skipped step did not use
        datafile.release()
        written = datafile.take_unsynced()
        if written:
            (saved or make_durable)(written)
    return FileResult(task_id=task.task_id, status=ResultStatus.OK, pipelines=results,
                      duration_s=time.monotonic() - started)


_HASHER: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    """The thread that hashes a file while the main thread works ahead (hashlib releases the GIL)."""
    global _HASHER
    if _HASHER is None:
        _HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash")
    return _HASHER


def _die_with_parent() -> None:
    """Linux: be killed when the supervisor dies, so an orphan never goes on with a handed-back file."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before we got here
        os._exit(RET_WORKER_BOOT)


def worker_main(slot: int, conn: Any, pipelines: list[dict], log_json: bool | None) -> None:
    """The worker's loop: one task at a time until told to stop or the supervisor goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the supervisor; it stops us in order
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The supervisor blocks these while it spawns us; the mask is inherited, so lift it here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent()
    from omsd.logging import configure_logging

    configure_logging(json=log_json, process="worker", slot=slot)
    import structlog

    log = structlog.get_logger("workers.main")
    try:
        from workers.pipeline import PipelineRunner

        runners = {p["name"]: PipelineRunner(p["name"], p["topic"], p["steps"], retries=p.get("retries", 2),
                                             backoff_s=p.get("backoff_s", 0.5),
                                             default_timeout_s=p.get("step_timeout_s")) for p in pipelines}
    except Exception as exc:  # noqa: BLE001 - any failure here is a boot failure
        log.error("worker failed to boot", error=repr(exc))
        try:
            conn.send(BootFailed(error=repr(exc)))
        finally:
            sys.exit(RET_WORKER_BOOT)
    assert "confluent_kafka" not in sys.modules, "workers must not import confluent_kafka"
    conn.send(Ready(pid=os.getpid()))
    # Reports wait in the outbox while more files are in hand, so that the files saved for them are made
    # durable together (see workers.outbox); with nothing more in hand they are sent at once.
    outbox = Outbox(conn.send)
    in_hand: deque[FileTask] = deque()  # tasks received together, worked through in order
    try:
        while True:
            if not in_hand:
                if outbox and not conn.poll(0):
                    outbox.flush(idle=True)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    return  # the supervisor is gone
                if message.kind is MessageKind.STOP:
                    outbox.close()
                    return
                in_hand.extend(message.tasks if message.kind is MessageKind.TASKS else (message,))
            task = in_hand.popleft()
            try:
                result = process(task, runners, outbox.put,
                                 functools.partial(outbox.saved, whole_fs=task.sync_whole_fs))
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to the worker
                log.exception("file processing raised", path=task.file.relative_path)
                result = FileResult(task_id=task.task_id, status=ResultStatus.ERROR, error=repr(exc))
            outbox.put(result)
            if outbox.due():
                outbox.flush()
    except (BrokenPipeError, OSError):
        return
