"""PipelineRunner: order, retries, restore of finished steps, outcome reporting."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from workers.datafile import DataFile
from workers.pipeline import PipelineRunner, StepOutcome, validate_pipeline
from workers.steps.base import StepConfigError

F = "tests.unit.stepfuncs:"


@pytest.fixture(autouse=True)
def counter_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "counters"
    directory.mkdir()
    monkeypatch.setenv("OMSD_TEST_COUNTER_DIR", str(directory))
    return directory


def make_datafile(tmp_path: Path, content: bytes = b"pipeline content") -> DataFile:
    staged = tmp_path / "omsd-staged"
    staged.write_bytes(content)
    return DataFile(staged_path=str(staged), size=len(content), subdir_str="d", filename="f.txt",
                    file_hash=hashlib.sha512(content).digest(), file_mtime=None, topic="raw")


def run(runner: PipelineRunner, datafile: DataFile, done: set[int] = frozenset()) -> tuple[bool, list[StepOutcome]]:
    outcomes: list[StepOutcome] = []
    ok = runner.run(datafile, set(done), outcomes.append)
    return ok, outcomes


def test_steps_run_in_order_and_report_each(tmp_path: Path, counter_dir: Path) -> None:
    out = tmp_path / "out"
    runner = PipelineRunner("mirror", "raw", [
        ("save", {"dir": str(out)}),
        ("metadata", {"function": F + "meta_dict", "topic": "meta"}),
        ("call", {"function": F + "record_path"}),
        ("reproduce", {"function": F + "repro_str", "topic": "results"}),
    ])
    df = make_datafile(tmp_path)
    ok, outcomes = run(runner, df)
    assert ok
    assert [(o.index, o.kind, o.status, o.attempts, o.error) for o in outcomes] == [
        (0, "save", "done", 1, None), (1, "metadata", "done", 1, None),
        (2, "call", "done", 1, None), (3, "reproduce", "done", 1, None),
    ]
    assert all(o.pipeline == "mirror" and o.duration_s >= 0 for o in outcomes)
    assert [m.topic for m in outcomes[1].messages] == ["meta"]
    assert outcomes[3].messages[0].value == b"len=16 \xc3\xa9"
    # the call step ran after save: it saw the saved path
    assert json.loads((counter_dir / "seen_path").read_text()) == str((out / "d" / "f.txt").resolve())


def test_on_step_is_called_as_each_step_finishes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner = PipelineRunner("p", "raw", [("save", {"dir": str(out)}), ("call", {"function": F + "call_ok"})])
    seen_file_when_reported: list[bool] = []
    runner.run(make_datafile(tmp_path), set(), lambda o: seen_file_when_reported.append((out / "d" / "f.txt").exists()))
    assert seen_file_when_reported == [True, True]


def test_retry_then_success(tmp_path: Path, counter_dir: Path) -> None:
    runner = PipelineRunner("p", "raw", [("call", {"function": F + "flaky_twice"})], retries=2, backoff_s=0.01)
    ok, outcomes = run(runner, make_datafile(tmp_path))
    assert ok
    assert [(o.status, o.attempts, o.error) for o in outcomes] == [("done", 3, None)]
    assert (counter_dir / "flaky").read_text() == "3"


def test_final_failure_after_retries_stops_the_pipeline(tmp_path: Path, counter_dir: Path) -> None:
    runner = PipelineRunner("p", "raw", [
        ("call", {"function": F + "always_fails"}),
        ("call", {"function": F + "count_calls"}),
    ], retries=2, backoff_s=0.01)
    ok, outcomes = run(runner, make_datafile(tmp_path))
    assert not ok
    assert len(outcomes) == 1
    failed = outcomes[0]
    assert (failed.index, failed.status, failed.attempts, failed.messages) == (0, "failed", 3, [])
    assert "RuntimeError: permanent failure" in failed.error
    assert (counter_dir / "always").read_text() == "3"
    assert not (counter_dir / "calls-f.txt").exists()


def test_backoff_grows_exponentially_and_is_capped(tmp_path: Path) -> None:
    runner = PipelineRunner("p", "raw", [("call", {"function": F + "always_fails"})], retries=2, backoff_s=0.2)
    assert [runner.backoff(a) for a in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    started = time.monotonic()
    ok, _ = run(runner, make_datafile(tmp_path))
    assert not ok
    assert time.monotonic() - started >= 0.6  # 0.2 + 0.4 between three attempts


def test_zero_retries_means_one_attempt(tmp_path: Path, counter_dir: Path) -> None:
    runner = PipelineRunner("p", "raw", [("call", {"function": F + "always_fails"})], retries=0)
    ok, outcomes = run(runner, make_datafile(tmp_path))
    assert not ok and outcomes[0].attempts == 1
    assert (counter_dir / "always").read_text() == "1"


def test_unsafe_path_is_not_retried(tmp_path: Path) -> None:
    staged = tmp_path / "omsd-staged"
    staged.write_bytes(b"x")
    df = DataFile(staged_path=str(staged), size=1, subdir_str="../up", filename="f", file_hash=b"\0" * 64,
                  file_mtime=None, topic="raw")
    runner = PipelineRunner("p", "raw", [("save", {"dir": str(tmp_path / "out")})], retries=3, backoff_s=1)
    started = time.monotonic()
    ok, outcomes = run(runner, df)
    assert not ok
    assert outcomes[0].attempts == 1 and "UnsafePathError" in outcomes[0].error
    assert time.monotonic() - started < 1


def test_done_steps_are_restored_not_run_nor_reported(tmp_path: Path, counter_dir: Path) -> None:
    out = tmp_path / "out"
    runner = PipelineRunner("p", "raw", [
        ("save", {"dir": str(out)}),
        ("call", {"function": F + "count_calls"}),
        ("call", {"function": F + "record_path"}),
    ])
    ok, outcomes = run(runner, make_datafile(tmp_path), done={0, 1})
    assert ok
    assert [(o.index, o.status) for o in outcomes] == [(2, "done")]
    assert not out.exists()  # save was not re-run
    assert not (counter_dir / "calls-f.txt").exists()
    # restore() told later steps where the file was saved
    assert json.loads((counter_dir / "seen_path").read_text()) == str((out / "d" / "f.txt").resolve())


def test_all_done_returns_true_without_reports(tmp_path: Path) -> None:
    runner = PipelineRunner("p", "raw", [("call", {"function": F + "always_fails"})])
    ok, outcomes = run(runner, make_datafile(tmp_path), done={0})
    assert ok and outcomes == []


def test_has_prior_save_is_computed(tmp_path: Path) -> None:
    with pytest.raises(StepConfigError, match="save step"):
        PipelineRunner("p", "raw", [("exec", {"argv": ["/bin/true"]})])
    with pytest.raises(StepConfigError, match="save step"):
        PipelineRunner("p", "raw", [("exec", {"argv": ["/bin/true"]}), ("save", {"dir": str(tmp_path)})])
    PipelineRunner("p", "raw", [("save", {"dir": str(tmp_path)}), ("exec", {"argv": ["/bin/true"]})])
    PipelineRunner("p", "raw", [
        ("reproduce", {"function": F + "repro_none", "topic": "t", "mode": "disk", "dir": str(tmp_path)}),
        ("exec", {"argv": ["/bin/true"]}),
    ])


def test_validate_pipeline_collects_all_errors(tmp_path: Path) -> None:
    assert validate_pipeline("ok", "raw", [("save", {"dir": str(tmp_path)}), ("call", {"function": F + "call_ok"})]) == []
    errors = validate_pipeline("bad", "raw", [
        ("save", {}),
        ("exec", {"argv": ["/bin/true"]}),  # a save step exists before it, even though it is invalid
        ("metadata", {"function": "missing_mod_omsd:f", "topic": "t"}),
        ("teleport", {}),
    ])
    assert len(errors) == 3
    assert "steps[0]" in errors[0] and "'dir'" in errors[0]
    assert "steps[2]" in errors[1] and "missing_mod_omsd" in errors[1]
    assert "steps[3]" in errors[2] and "unknown step kind 'teleport'" in errors[2]
    assert validate_pipeline("bad", "raw", [("metadata", {"function": "missing_mod_omsd:f", "topic": "t"})],
                             load_functions=False) == []
    assert validate_pipeline("", "", []) != []
    assert validate_pipeline("p", "raw", [{"save": {"dir": str(tmp_path)}}]) == []
    assert validate_pipeline("p", "raw", [{"save": {}, "call": {}}]) != []
