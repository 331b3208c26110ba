"""The workers' whole-file sha512: hashed through windows of read-only mappings."""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import time

import pytest

import workers.main as worker
from workers.messages import FileMeta, FileTask, MessageKind, ResultStatus, StepStatus
import workers.mapped as mapped


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 3 * 8192 + 5, 5 * 8192])
def test_file_sha512_across_windows(tmp_path, monkeypatch, size: int) -> None:
    monkeypatch.setattr(mapped, "MAP_WINDOW", 2 * mmap.ALLOCATIONGRANULARITY)
    monkeypatch.setattr(worker, "BLOCK", 3000)  # blocks that do not divide the window
    monkeypatch.setattr(worker, "READ_HASH_MAX", -1)  # through the mappings even for these small sizes
    data = os.urandom(size)
    path = tmp_path / "staged"
    path.write_bytes(data + b"trailing bytes beyond the file are not hashed")
    assert worker.file_sha512(str(path), size) == hashlib.sha512(data).digest()


@pytest.mark.parametrize("read_max", [-1, 1 << 20], ids=["mapped", "read"])
def test_file_sha512_of_a_short_staging_file_does_not_match(tmp_path, monkeypatch, read_max: int) -> None:
    monkeypatch.setattr(worker, "READ_HASH_MAX", read_max)
    path = tmp_path / "staged"
    path.write_bytes(b"abc")
    hashed = worker.file_sha512(str(path), 10)
    assert hashed == hashlib.sha512(b"abc").digest() != hashlib.sha512(b"abc" + bytes(7)).digest()


@pytest.mark.parametrize("size", [0, 1, 4096, 100_000])
def test_file_sha512_reads_a_small_file_at_once_and_ignores_trailing_bytes(tmp_path, size: int) -> None:
    assert size <= worker.READ_HASH_MAX
    data = os.urandom(size)
    path = tmp_path / "staged"
    path.write_bytes(data + b"trailing bytes beyond the file are not hashed")
    assert worker.file_sha512(str(path), size) == hashlib.sha512(data).digest()


def test_a_small_file_is_read_once_and_its_verified_bytes_given_to_the_steps(tmp_path, monkeypatch) -> None:
    content = os.urandom(3000)
    staged = tmp_path / "staged"
    staged.write_bytes(content + b"trailing")
    seen = []
    monkeypatch.setattr(worker, "read_staged", lambda path, size: seen.append((path, size)) or content)
    out = tmp_path / "out"
    result = worker.process(_task(staged, content, hashlib.sha512(content).digest()), _runner(out), lambda m: None)
    assert result.status is ResultStatus.OK
    assert seen == [(str(staged), len(content))]  # one read, for the hash and the save
    assert (out / "run" / "a.dat").read_bytes() == content


def test_a_small_file_that_fails_its_hash_gives_no_bytes_to_any_step(tmp_path) -> None:
    content = os.urandom(3000)
    staged = tmp_path / "staged"
    staged.write_bytes(content)
    out = tmp_path / "out"
    result = worker.process(_task(staged, content, hashlib.sha512(b"other").digest()), _runner(out), lambda m: None)
    assert result.status is ResultStatus.HASH_MISMATCH and not out.exists()


# -- process(): the first step works ahead while the file is hashed ------------------------------------

def _task(staged, content: bytes, file_hash: bytes, done: dict | None = None) -> FileTask:
    meta = FileMeta(relative_path="run/a.dat", subdir_str="run", filename="a.dat", file_hash=file_hash,
                    file_mtime=None, topic="raw")
    return FileTask(task_id=7, path=str(staged), size=len(content), file=meta, pipelines=("p",), done=done or {},
                    chunks=((1, 0, len(content), hashlib.sha512(content).digest()),))


def _runner(out):
    from workers.pipeline import PipelineRunner

    return {"p": PipelineRunner("p", "raw", [("save", {"dir": str(out)})], retries=0)}


def _recorded_saves(monkeypatch, hashed: threading.Event | None = None) -> list:
    """Record each temporary copy save writes, and whether the file was still being hashed then."""
    import workers.steps.save as save_module

    writes: list = []
    real = save_module._write_temp

    def recording(datafile, temp, direct_io):
        writes.append((temp, hashed is not None and not hashed.is_set()))
        real(datafile, temp, direct_io)

    monkeypatch.setattr(save_module, "_write_temp", recording)
    return writes


def test_process_saves_the_copy_written_while_hashing(tmp_path, monkeypatch) -> None:
    content = os.urandom(3 * 4096 + 11)
    staged = tmp_path / "staged"
    staged.write_bytes(content)
    hashed = threading.Event()
    writes = _recorded_saves(monkeypatch, hashed)
    real_hash = worker.file_sha512

    def slow_hash(path, size):
        time.sleep(0.2)
        digest = real_hash(path, size)
        hashed.set()
        return digest

    monkeypatch.setattr(worker, "file_sha512", slow_hash)
    monkeypatch.setattr(worker, "INLINE_HASH_MAX", 0)  # hash in the thread even a file this small
    sent: list = []
    result = worker.process(_task(staged, content, hashlib.sha512(content).digest()), _runner(tmp_path / "out"),
                            sent.append)
    assert result.status is ResultStatus.OK and result.pipelines == {"p": True}
    assert hashed.is_set()
    assert [ahead for _temp, ahead in writes] == [True]  # written once, while hashing; the step only renamed it
    assert (tmp_path / "out" / "run" / "a.dat").read_bytes() == content
    assert os.listdir(tmp_path / "out" / "run") == ["a.dat"]
    started, finished = sent
    assert (started.kind, started.task_id, started.step, started.attempt) == (MessageKind.STEP_STARTED, 7, "save", 1)
    assert (finished.kind, finished.task_id, finished.status) == (MessageKind.STEP, 7, StepStatus.DONE)


def test_process_removes_the_copy_written_ahead_when_the_hash_fails(tmp_path) -> None:
    content = os.urandom(5000)
    staged = tmp_path / "staged"
    staged.write_bytes(content)
    result = worker.process(_task(staged, content, hashlib.sha512(b"other").digest()), _runner(tmp_path / "out"),
                            lambda _m: None)
    assert result.status is ResultStatus.HASH_MISMATCH and result.bad_chunks == ()  # each chunk matches itself
    assert not (tmp_path / "out" / "run").exists() or os.listdir(tmp_path / "out" / "run") == []


def test_process_does_not_prepare_a_save_that_is_already_done(tmp_path, monkeypatch) -> None:
    content = os.urandom(5000)
    staged = tmp_path / "staged"
    staged.write_bytes(content)
    writes = _recorded_saves(monkeypatch)
    result = worker.process(_task(staged, content, hashlib.sha512(content).digest(), done={"p": [0]}),
                            _runner(tmp_path / "out"), lambda _m: None)
    assert result.status is ResultStatus.OK and writes == []
    assert not (tmp_path / "out" / "run" / "a.dat").exists()  # restored, not redone
