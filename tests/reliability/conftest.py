"""Harness for the reliability suites: daemons under test, uploads, result topics, the slow switch.

Long forms of the suites run only with ``OMSD_SLOW=1`` (they carry the ``slow``
marker as well, so ``-m "not slow"`` deselects them explicitly).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from confluent_kafka import Consumer

from omsd.control.client import ControlClient, ControlError
from omsd.intake.staging import SHM_DIR, SHM_PREFIX
from tests.chunks import REPO, start_daemon, stop_daemon, wait_for
from tests.conftest import client_props, write_config

SLOW = os.environ.get("OMSD_SLOW") == "1"
slow_only = [pytest.mark.slow, pytest.mark.skipif(not SLOW, reason="long form: set OMSD_SLOW=1")]


class Daemon:
    """One `omsd run` under test: its own state and output directories, a label in the record file."""

    def __init__(self, base: Path, bootstrap: str, topic: str, *, label: str, steps: str, workers: int = 2,
                 group: str | None = None, extra: str = "", env: dict | None = None) -> None:
        self.base = base
        self.label = label
        self.out = base / "out"
        self.state = base / "state"
        self.log = base / "daemon.log"
        base.mkdir(parents=True, exist_ok=True)
        group_line = f"    group.id: {group}\n" if group else ""
        self.config = write_config(base / "omsd.yaml", bootstrap, state_dir=self.state, extra=f"""workers: {workers}
{extra}pipelines:
  - name: mirror
    topic: {topic}
{group_line}    steps:
{steps.format(out=self.out)}""")
        self.env = {**(env or {}), "OMSD_TEST_LABEL": label}
        self.proc: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()

    # -- process control -------------------------------------------------------------------------
    def start(self) -> "Daemon":
        self.proc = start_daemon(["run", "--config", str(self.config)], self.log, self.env)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        return stop_daemon(self.proc, sig, timeout)

    def kill(self) -> None:
        """kill -9 the supervisor (its workers are left to notice on their own)."""
        assert self.proc is not None
        self.remember_workers()
        self.proc.kill()
        self.proc.wait()

    def reap_orphans(self, timeout: float = 30) -> None:
        """Wait for workers orphaned by a kill -9 to leave (they finish their file, then exit); kill stragglers."""
        deadline = time.monotonic() + timeout
        for pid in list(self.seen_pids):
            try:
                proc = psutil.Process(pid)
                proc.wait(max(0.1, deadline - time.monotonic()))
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                proc.kill()
        self.seen_pids.clear()

    # -- control socket ----------------------------------------------------------------------------
    def status(self) -> dict | None:
        try:
            reply = ControlClient(self.state / "omsd.sock", timeout=10).request("status")
        except (ControlError, OSError):
            return None
        self.seen_pids |= {w["pid"] for w in reply.get("workers", []) if w.get("pid")}
        return reply

    def remember_workers(self) -> None:
        self.status()

    def assigned(self) -> int:
        status = self.status()
        return sum(1 for p in status["partitions"] if p["assigned"]) if status else 0

    def wait_assigned(self, timeout: float = 30, at_least: int = 1) -> None:
        wait_for(lambda: self.assigned() >= at_least, timeout, f"{self.label}: partitions assigned", self.proc,
                 self.log)

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            status = self.status()
            return bool(status and status["workers"] and all(w["state"] == "RUNNING" for w in status["workers"]))
        wait_for(ready, timeout, f"{self.label}: workers running", self.proc, self.log)

    def busy_workers(self) -> list[dict]:
        status = self.status()
        return [w for w in status["workers"] if w["current_file"] and w["state"] == "RUNNING"] if status else []

    def saved(self) -> dict[str, bytes]:
        """Saved files, leaving out the save step's temporary files."""
        if not self.out.exists():
            return {}
        return {p.relative_to(self.out).as_posix(): p.read_bytes() for p in sorted(self.out.rglob("*"))
                if p.is_file() and not p.name.startswith(".omsd-tmp-")}

    @property
    def staging_prefix(self) -> str:
        """The name prefix of this daemon's staging segments and spill files (as omsd.intake.staging makes it)."""
        return f"{SHM_PREFIX}{zlib.crc32(str(self.state.resolve()).encode()):08x}-"

    def staging_leftovers(self) -> list[Path]:
        """Shared-memory segments and spill files of this daemon that exist now."""
        found = list(SHM_DIR.glob(f"{self.staging_prefix}*")) if SHM_DIR.is_dir() else []
        for directory in (self.state / "spill", self.state / "shm"):
            if directory.is_dir():
                found += list(directory.glob(f"{self.staging_prefix}*"))
        return found

    def temp_leftovers(self) -> list[str]:
        return [str(p) for p in self.out.rglob(".omsd-tmp-*")] if self.out.exists() else []

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; whatever is still running at the end is killed, orphaned workers too."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.running:
            daemon.remember_workers()
            daemon.proc.kill()  # type: ignore[union-attr]
            daemon.proc.wait()  # type: ignore[union-attr]
        daemon.reap_orphans(timeout=10)
        for leftover in daemon.staging_leftovers():  # a supervisor killed -9 leaves its segments to its successor
            leftover.unlink(missing_ok=True)


def make_files(root: Path, n: int, min_size: int, max_size: int, seed: int, prefix: str = "run") -> dict[str, bytes]:
    """``n`` random files under ``root`` in a few subdirectories; returns relative path → bytes."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        rel = f"{prefix}{i % 5}/sample_{seed}_{i:03d}.dat"
        data = rng.randbytes(rng.randint(min_size, max_size))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = data
    return files


def upload(config: Path, topic: str, root: Path, chunk_size: int = 1 << 18, timeout: float = 120) -> None:
    """`omsd upload ROOT` (file-affine partitioning): every chunk acknowledged, or the test fails."""
    done = subprocess.run([sys.executable, "-m", "omsd.cli", "upload", str(root), "--config", str(config),
                           "--topic", topic, "--chunk-size", str(chunk_size), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"omsd upload failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


def uploader_config(path: Path, bootstrap: str) -> Path:
    """A config for `omsd upload` only (broker and producer parts)."""
    return write_config(path, bootstrap, state_dir=path.parent / "upload-state")


def consume_results(bootstrap: str, topic: str, want: set[str], timeout: float = 30) -> dict[str, list[dict]]:
    """Read ``topic`` from the beginning until every key in ``want`` was seen; key → decoded JSON values."""
    consumer = Consumer({**client_props(bootstrap), "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not want <= set(seen):
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    seen.setdefault(msg.key().decode(), []).append(json.loads(msg.value()))
    finally:
        consumer.close()
    return seen


def result_key(rel_path: str) -> str:
    """OpenMSIStream's processing-result key of a file."""
    subdir, _, name = rel_path.rpartition("/")
    return f"{'_'.join(subdir.split('/'))}_{name}_chunk_processing_result"
