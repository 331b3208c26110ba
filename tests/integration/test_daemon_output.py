"""What `omsd download`/`omsd run` print: a progress line at the default level, a line per file at -v."""

from __future__ import annotations

import uuid

from tests.chunks import log_events, produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import write_config



def events(log_path) -> list[dict]:
    return [e for e in log_events(log_path) if "raw" not in e]


def download(broker, tmp_path, name: str, *flags: str) -> tuple[list[dict], dict[str, bytes]]:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    cfg = write_config(tmp_path / f"{name}.yaml", broker.bootstrap, state_dir=tmp_path / f"{name}-state", workers=2)
    out = tmp_path / name
    files = {f"d/{name}-{i}.bin": bytes([i]) * (1000 + i) for i in range(12)}
    log = tmp_path / f"{name}.log"
    proc = start_daemon(["download", str(out), "--config", str(cfg), "--topic", topic, *flags], log)
    try:
        produce_files(broker.bootstrap, topic, files)
        wait_for(lambda: out.exists() and tree(out) == files, 60, "files saved", proc, log)
        if "-v" not in flags:
            wait_for(lambda: any(e["event"].startswith("progress:") and e.get("files_total") == len(files)
                                 for e in events(log)), 30, "a progress line counting every file", proc, log)
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return events(log), files


def test_default_level_has_progress_lines_and_no_line_per_file(broker, tmp_path) -> None:
    events, files = download(broker, tmp_path, "quiet", "--progress-every", "0.5")
    progress = [e for e in events if e["event"].startswith("progress:")]
    assert progress and all(e["level"] == "info" for e in progress)
    assert sum(e["files"] for e in progress) == len(files)
    assert sum(e["bytes"] for e in progress) == sum(map(len, files.values()))
    assert all(e["failed"] == 0 for e in progress)
    assert not [e for e in events if e["event"] in ("file done", "step done")]
    assert not [e for e in events if e["level"] == "debug"]


def test_verbose_has_a_line_per_file_from_supervisor_and_workers(broker, tmp_path) -> None:
    events, files = download(broker, tmp_path, "loud", "-v", "--progress-every", "0")
    done = {e["path"] for e in events if e["event"] == "file done" and e["status"] == "done"}
    assert done == set(files)
    steps = [e for e in events if e["event"] == "step done" and e["kind"] == "save"]
    assert {e["file"] for e in steps} == set(files) and {e["process"] for e in steps} == {"worker"}  # theirs too
    assert not [e for e in events if e["event"].startswith("progress:")]  # --progress-every 0: none
