"""The messages between supervisor and workers: typed, frozen, and told apart by an enum after the pipe."""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle

import pytest

from workers.messages import (
    BootFailed, FileMeta, FileResult, FileTask, MessageKind, Produced, Progress, Ready, Reports, ResultStatus,
    StepFinished, StepStarted, StepStatus, Stop, Tasks,
)

META = FileMeta(relative_path="run/a.dat", subdir_str="run", filename="a.dat", file_hash=b"\x01" * 64,
                file_mtime=None, topic="raw")
EVERY_MESSAGE = [
    FileTask(task_id=1, path="/dev/shm/omsd-x", size=3, file=META, pipelines=("p",), done={"p": (0,)},
             chunks=((1, 0, 3, b"\x02" * 64),)),
    Stop(),
    Ready(pid=42),
    BootFailed(error="ImportError('lab')"),
    StepStarted(task_id=1, pipeline="p", index=0, step="call", attempt=1, limit_s=2.0),
    StepFinished(task_id=1, pipeline="p", index=0, step="reproduce", status=StepStatus.DONE, attempts=1, error=None,
                 duration_s=0.1, produced=(Produced("results", "run_a.dat_chunk_processing_result", b"{}"),)),
    FileResult(task_id=1, status=ResultStatus.OK, pipelines={"p": True}, duration_s=0.2),
]
EVERY_MESSAGE += [Tasks(tasks=(EVERY_MESSAGE[0], EVERY_MESSAGE[0])), Reports(reports=tuple(EVERY_MESSAGE[4:])),
                  Progress(task_id=1)]


def test_every_kind_has_one_message() -> None:
    assert sorted(m.kind.value for m in EVERY_MESSAGE) == sorted(k.value for k in MessageKind)


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: m.kind.value)
def test_a_message_arrives_through_a_pipe_as_it_was_sent(message: object) -> None:
    parent, child = multiprocessing.Pipe()
    parent.send(message)
    received = child.recv()
    assert received == message and received.kind is message.kind  # `is`: the receiver compares enums
    assert pickle.loads(pickle.dumps(message)) == message


def test_messages_are_frozen_and_their_kind_is_not_chosen_by_the_sender() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVERY_MESSAGE[2].pid = 7  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ready(pid=1, kind=MessageKind.RESULT)  # type: ignore[call-arg]
