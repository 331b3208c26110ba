"""Every message between the supervisor and its worker processes, defined once for both sides.

A leaf module (stdlib only): the supervisor's pool and jobs and the worker's
main loop import it, and it imports neither. Messages travel pickled through
each worker's duplex pipe; the receiver dispatches on ``message.kind``, a
class attribute (it is not pickled, and no sender can choose it)::

    supervisor → worker   FileTask            process one staged file
                          Tasks               several FileTasks, in order (one pipe write for many small files)
                          Stop                exit after the current file
    worker → supervisor   Ready               booted, taking work
                          BootFailed          cannot build its pipelines (then exits with RET_WORKER_BOOT)
                          StepStarted         an attempt at a step begins, with its time limit (watchdog)
                          StepFinished        one step of one pipeline finished (recorded before the next)
                          FileResult          the file is finished (after its last StepFinished)
                          Reports             several of the above, in the order they were made
                          Progress            files processed up to a task; their reports follow once
                                              the files they saved are durable
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar


class MessageKind(str, Enum):
    """What a message between supervisor and worker is."""

    TASK = "task"
    TASKS = "tasks"
    STOP = "stop"
    READY = "ready"
    BOOT_FAILED = "boot_failed"
    STEP_STARTED = "step_started"
    STEP = "step"
    RESULT = "result"
    REPORTS = "reports"
    PROGRESS = "progress"


class StepStatus(str, Enum):
    """How one step ended."""

    DONE = "done"
    FAILED = "failed"


class ResultStatus(str, Enum):
    """How a whole file ended in its worker."""

    OK = "ok"  # verified and every requested pipeline ran (each pipeline's success is in ``pipelines``)
    HASH_MISMATCH = "hash_mismatch"  # the staged bytes do not match the whole-file sha512
    ERROR = "error"  # processing raised outside the steps


@dataclass(frozen=True)
class FileMeta:
    """What the worker needs to know of a file besides its bytes."""

    relative_path: str
    subdir_str: str
    filename: str
    file_hash: bytes  # whole-file sha512
    file_mtime: float | None
    topic: str
    filename_append: str = ""


@dataclass(frozen=True)
class FileTask:
    """Process one staged file (by reference: path and size) with the named pipelines."""

    task_id: int
    path: str  # the staged bytes (shared memory, a spill file, or kept bytes of a failed file)
    size: int
    file: FileMeta
    pipelines: tuple[str, ...]
    done: dict[str, tuple[int, ...]]  # per pipeline, the indexes of steps that finished in an earlier run
    chunks: tuple[tuple[int, int, int, bytes], ...] = ()  # (chunk_i, offset, length, sha512), to name bad chunks
    sync_whole_fs: bool = False  # no spill file was in use at hand-out: one syncfs may make a group durable
    kind: ClassVar[MessageKind] = MessageKind.TASK


@dataclass(frozen=True)
class Stop:
    """Exit after the current file."""

    kind: ClassVar[MessageKind] = MessageKind.STOP


@dataclass(frozen=True)
class Ready:
    """The worker has built its pipelines and takes work."""

    pid: int
    kind: ClassVar[MessageKind] = MessageKind.READY


@dataclass(frozen=True)
class BootFailed:
    """The worker cannot build its pipelines (a step's code fails to import, ...)."""

    error: str
    kind: ClassVar[MessageKind] = MessageKind.BOOT_FAILED


@dataclass(frozen=True)
class Produced:
    """A result message a step wants produced (the supervisor produces it)."""

    topic: str
    key: str
    value: bytes


@dataclass(frozen=True)
class StepStarted:
    """An attempt at one step of one pipeline begins on the task's file.

    The supervisor's watchdog times it from its arrival: past ``limit_s`` the worker is killed.
    """

    task_id: int
    pipeline: str
    index: int  # the step's position in its pipeline, from 0
    step: str  # the step's kind
    attempt: int  # from 1
    limit_s: float | None  # None: no limit
    kind: ClassVar[MessageKind] = MessageKind.STEP_STARTED


@dataclass(frozen=True)
class StepFinished:
    """One step of one pipeline finished on the task's file."""

    task_id: int
    pipeline: str
    index: int  # the step's position in its pipeline, from 0
    step: str  # the step's kind ("save", "call", ...)
    status: StepStatus
    attempts: int
    error: str | None
    duration_s: float
    produced: tuple[Produced, ...] = ()
    kind: ClassVar[MessageKind] = MessageKind.STEP


@dataclass(frozen=True)
class FileResult:
    """The task's file is finished in the worker."""

    task_id: int
    status: ResultStatus
    pipelines: dict[str, bool] = field(default_factory=dict)  # with OK: whether each pipeline succeeded
    bad_chunks: tuple[int, ...] = ()  # with HASH_MISMATCH: chunks whose data does not match their own hash
    error: str | None = None
    duration_s: float | None = None  # with OK: the time the file took in the worker
    kind: ClassVar[MessageKind] = MessageKind.RESULT


@dataclass(frozen=True)
class Tasks:
    """Several files to process, in this order."""

    tasks: tuple[FileTask, ...]
    kind: ClassVar[MessageKind] = MessageKind.TASKS


#: One report of a worker.
Report = Ready | BootFailed | StepStarted | StepFinished | FileResult


@dataclass(frozen=True)
class Reports:
    """Several reports, in the order they were made."""

    reports: tuple[Report, ...]
    kind: ClassVar[MessageKind] = MessageKind.REPORTS


@dataclass(frozen=True)
class Progress:
    """The worker has processed every task it was sent up to ``task_id`` (and is on to the next).

    Sent as soon as a group of results is handed to the durability barrier; the results themselves
    follow once the files are durable. The supervisor counts only the tasks not processed yet
    against the files a worker may hold ahead, so a slow barrier does not leave the worker idle.
    """

    task_id: int
    kind: ClassVar[MessageKind] = MessageKind.PROGRESS


#: Messages the supervisor sends.
ToWorker = FileTask | Tasks | Stop
#: Messages a worker sends.
FromWorker = Report | Reports | Progress
