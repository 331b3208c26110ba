"""A loop turn's outcomes are recorded in one transaction, and what follows them waits for its commit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from omsd.dispatch.jobs import FileJob, FileJobs
from omsd.registry import Registry
from omsd.statewrites import StateWrites
from omsd.telemetry.metrics import Metrics
from omsd.telemetry.totals import Stats
from workers.messages import FileResult, ResultStatus, StepFinished, StepStatus


class FakeIntake:
    def __init__(self) -> None:
        self.finished: list[tuple[object, bool]] = []

    def finish(self, assembly: object, recorded: bool = True) -> None:
        self.finished.append((assembly, recorded))


class FakePipeline:
    name = "p"


def _jobs(tmp_path: Path, n: int) -> tuple[FileJobs, Registry, FakeIntake, list[int]]:
    registry = Registry(tmp_path / "registry.sqlite")
    jobs = FileJobs(registry=registry, staging=None, pool=None, metrics=Metrics(), stats=Stats(),  # type: ignore[arg-type]
                    produce=lambda *a: None, failed_dir=tmp_path / "failed", pipelines=[],
                    writes=StateWrites(tmp_path))
    intake = FakeIntake()
    ids = []
    for i in range(n):
        record = registry.register("t", f"f{i}", f"{i:0128x}", 10)
        jobs.jobs[i] = FileJob(intake=intake, assembly=f"assembly {i}", record_id=record.id, topic="t",  # type: ignore[arg-type]
                               relative_path=f"f{i}", size=10, pipelines=[FakePipeline()])  # type: ignore[list-item]
        ids.append(record.id)
    return jobs, registry, intake, ids


def _report(jobs: FileJobs, n: int) -> None:
    for i in range(n):
        jobs.on_step(StepFinished(task_id=i, pipeline="p", index=0, step="save", status=StepStatus.DONE, attempts=1,
                                  error=None, duration_s=0.001))
        jobs.on_result(FileResult(task_id=i, status=ResultStatus.OK, pipelines={"p": True}))


def test_outcomes_of_one_turn_are_one_commit_and_files_finish_after_it(tmp_path) -> None:
    jobs, registry, intake, ids = _jobs(tmp_path, 5)
    commits: list[str] = []
    registry.db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    _report(jobs, 5)
    assert intake.finished == [] and commits == []  # nothing recorded, nothing released before the flush
    jobs.flush()
    assert len(commits) == 1
    assert [a for a, recorded in intake.finished] == [f"assembly {i}" for i in range(5)]
    assert all(registry.get(i).status == "done" and registry.done_steps(i) == {"p": [0]} for i in ids)
    assert jobs.jobs == {}


def test_a_group_the_disk_refuses_changes_nothing_until_it_is_recorded(tmp_path) -> None:
    jobs, registry, intake, ids = _jobs(tmp_path, 3)
    (pages,) = registry.db.execute("PRAGMA page_count").fetchone()
    registry.db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's FULL, as on a full disk
    _report(jobs, 3)
    jobs.writes.retry_every_s = 0.0
    for index in range(1, 6):  # enough to need new pages
        jobs.on_step(StepFinished(task_id=0, pipeline="p", index=index, step="call", status=StepStatus.DONE,
                                  attempts=1, error="x" * 20000, duration_s=0.0))
    jobs.flush()
    assert jobs.writes.blocked
    assert intake.finished == [] and len(jobs.jobs) == 3  # staging kept, offsets held, jobs still jobs
    assert all(registry.get(i).status == "processing" for i in ids)
    registry.db.execute("PRAGMA max_page_count=1073741823")  # space returns
    jobs.writes.retry()
    assert not jobs.writes.blocked
    assert len(intake.finished) == 3 and jobs.jobs == {}
    assert all(registry.get(i).status == "done" for i in ids)


class FakeIntakeWithPipelines(FakeIntake):
    def pipelines_for(self, topic: str, relative_path: str) -> list[FakePipeline]:
        return [FakePipeline()]


class FakePool:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, task) -> None:
        self.submitted.append(task.relative_path)


def _assembly(i: int) -> SimpleNamespace:
    chunk = SimpleNamespace(file_hash=bytes([i]) * 64, subdir_str="d", filename=f"f{i}", file_mtime=None,
                            filename_append="")
    return SimpleNamespace(topic="t", relative_path=f"d/f{i}", chunk=chunk, staged=SimpleNamespace(size=10, path="x"),
                           chunk_table=lambda: [])


def test_a_poll_batch_is_registered_in_one_commit_and_handed_out_only_after_it(tmp_path) -> None:
    registry = Registry(tmp_path / "registry.sqlite")
    pool = FakePool()
    no_spill = SimpleNamespace(spill_used=0)
    jobs = FileJobs(registry=registry, staging=no_spill, pool=pool, metrics=Metrics(), stats=Stats(),  # type: ignore[arg-type]
                    produce=lambda *a: None, failed_dir=tmp_path / "failed", pipelines=[], writes=StateWrites(tmp_path))
    jobs.writes.retry_every_s = 0.0
    intake = FakeIntakeWithPipelines()
    commits: list[str] = []
    registry.db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    jobs.files_complete(intake, [_assembly(i) for i in range(4)])  # type: ignore[arg-type]
    assert len(commits) == 1 and pool.submitted == [f"d/f{i}" for i in range(4)] and not jobs.unregistered

    (pages,) = registry.db.execute("PRAGMA page_count").fetchone()
    registry.db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's FULL, as on a full disk
    batch = [_assembly(i) for i in range(10, 200)]  # enough rows to need new pages
    jobs.files_complete(intake, batch)  # type: ignore[arg-type]
    assert jobs.writes.blocked and len(pool.submitted) == 4 and len(jobs.unregistered) == len(batch)
    assert registry.find("t", "d/f10", batch[0].chunk.file_hash.hex()) is None  # nothing of the group recorded
    registry.db.execute("PRAGMA max_page_count=1073741823")  # space returns
    jobs.writes.retry()
    assert not jobs.writes.blocked and not jobs.unregistered
    assert pool.submitted[4:] == [a.relative_path for a in batch]
