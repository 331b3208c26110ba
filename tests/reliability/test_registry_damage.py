"""A damaged registry is a clear stop: one message naming the file and what to do, exit 65, no traceback.

The daemon runs for real (`omsd run` in a subprocess); it stops while opening
its registry, before it needs a broker. A second part shows that the same
files are not processed again after `omsd registry recover`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from omsd import exitcodes
from omsd.dev.broker import free_port
from omsd.registry import Registry
from tests.chunks import REPO
from tests.conftest import pipeline, write_config


def _healthy_registry(path: Path, files: int = 400) -> None:
    """A registry with outcomes, several pages long (so truncation cuts real data)."""
    registry = Registry(path)
    for i in range(files):
        record = registry.register("raw", f"dir/file-{i:04d}.bin", f"{i:0128x}", 1000 + i)
        registry.record_step(record.id, "mirror", 0, "save", "done", 1, None, 0.01)
        registry.record_pipeline(record.id, "mirror", "done")
        registry.set_status(record.id, "done")
    registry.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    registry.close()


def overwritten(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2 + 100)  # not on a page boundary either


def zero_length(path: Path) -> None:
    os.truncate(path, 0)


def middle_pages_garbage(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 3)
        handle.write(os.urandom(size // 3))


def _run(cfg: Path) -> subprocess.CompletedProcess:
    """`omsd run`; a daemon that took the registry as sound would wait for its broker until the timeout."""
    return subprocess.run([sys.executable, "-m", "omsd.cli", "run", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=20, cwd=REPO)


@pytest.mark.parametrize("damage", [overwritten, truncated, zero_length, middle_pages_garbage])
def test_damaged_registry_stops_with_its_exit_code_and_one_clear_message(tmp_path, damage: Callable) -> None:
    state = tmp_path / "state"
    state.mkdir()
    registry = state / "registry.sqlite"
    _healthy_registry(registry)
    damage(registry)
    damaged_bytes = registry.read_bytes()
    # Nothing listens on this port: the daemon must stop before it needs the broker.
    cfg = write_config(tmp_path / "omsd.yaml", f"127.0.0.1:{free_port()}",
                       pipeline("mirror", "raw", f"save: {{dir: {tmp_path / 'out'}}}"), workers=1)
    result = _run(cfg)
    assert result.returncode == exitcodes.RET_REGISTRY_DAMAGED, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    messages = [line for line in result.stderr.splitlines() if "registry damaged" in line]
    assert len(messages) == 1, result.stderr[-3000:]
    assert str(registry) in messages[0] and "move" in messages[0] and "aside" in messages[0], messages[0]
    assert "omsd registry recover" in messages[0], messages[0]
    assert '"exit_code": 65' in result.stderr.splitlines()[-1], result.stderr[-500:]  # "omsd stopped" tells the truth
    assert registry.read_bytes() == damaged_bytes  # left as it was for the operator
    assert not (state / "omsd.sock").exists()

    # `omsd registry check` says the same; `recover` keeps the damaged file aside and makes a sound one.
    check = subprocess.run([sys.executable, "-m", "omsd.cli", "registry", "check", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert check.returncode == exitcodes.RET_REGISTRY_DAMAGED and "damaged" in check.stderr, check
    recover = subprocess.run([sys.executable, "-m", "omsd.cli", "registry", "recover", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    assert recover.returncode == 0, recover.stdout + recover.stderr
    kept = [p for p in state.iterdir() if p.name.startswith("registry.sqlite.damaged-") and "-" not in p.name[24:]]
    assert [p.read_bytes() for p in kept] == [damaged_bytes], sorted(p.name for p in state.iterdir())
    again = subprocess.run([sys.executable, "-m", "omsd.cli", "registry", "check", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 0, again.stdout + again.stderr
    if damage is middle_pages_garbage:  # the pages before the damage are readable: their rows are saved
        db = sqlite3.connect(registry)
        (saved,) = db.execute("SELECT COUNT(*) FROM files WHERE status='done'").fetchone()
        db.close()
        assert saved > 0, recover.stdout


def test_a_registry_the_daemon_creates_is_never_left_empty(tmp_path) -> None:
    """A fresh state directory gets a complete registry in one step (schema written, then renamed)."""
    registry = Registry(tmp_path / "registry.sqlite")
    registry.close()
    assert (tmp_path / "registry.sqlite").read_bytes()[:16] == b"SQLite format 3\x00"
    assert not (tmp_path / "registry.sqlite.new").exists()
    Registry(tmp_path / "registry.sqlite").close()  # and it opens again as sound


def test_corruption_found_while_running_stops_gracefully_with_the_same_exit_code(broker, topic, tmp_path) -> None:
    """The registry is sound at start-up and damaged under the running daemon: the next query that reads
    a damaged page stops it (graceful, exit 65, the same one message), instead of a crash or a restart loop."""
    from tests.chunks import produce_files, start_daemon, wait_for

    state = tmp_path / "state"
    state.mkdir()
    registry = state / "registry.sqlite"
    _healthy_registry(registry, files=2000)
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                       pipeline("mirror", topic, f"save: {{dir: {tmp_path / 'out'}}}"), workers=1)
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log)
    try:
        produce_files(broker.bootstrap, topic, {"first.bin": b"1" * 5000})
        wait_for(lambda: (tmp_path / "out" / "first.bin").exists(), 60, "the first file saved", proc, log)
        # Another connection's write makes the daemon's SQLite drop its page cache at its next query...
        db = sqlite3.connect(registry)
        db.execute("PRAGMA user_version = 7")
        db.close()
        size = registry.stat().st_size
        with open(registry, "r+b") as handle:  # ... so that it reads these pages from the disk
            handle.seek(4096)
            handle.write(os.urandom(size - 4096))
        produce_files(broker.bootstrap, topic, {"new/file.bin": b"x" * 5000})
        assert proc.wait(60) == exitcodes.RET_REGISTRY_DAMAGED, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text
    messages = [line for line in text.splitlines() if "registry damaged" in line]
    assert len(messages) == 1 and str(registry) in messages[0] and "aside" in messages[0], messages
    assert '"exit_code": 65' in text.splitlines()[-1]
