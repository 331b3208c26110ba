"""`omsd upload --watch DIR`: keep uploading files that appear or change in a directory.

Like OpenMSIStream's DataFileUploadDirectory, with a memory: a file is sent
once its size and mtime have been unchanged for ``--stable-secs``, and the
state file (SQLite) remembers each uploaded file's size, mtime and sha512 so
a restart sends nothing twice. A changed file is sent again in full; a file
whose mtime changed but whose content did not is only re-recorded.

watchdog (inotify, or polling where inotify is unavailable) reports changes;
a periodic rescan of the tree is the safety net for anything it missed.
Hidden files and directories (names starting with '.', e.g. rsync's temporary
files) are ignored. SIGTERM/SIGINT stop the watcher: files already being sent
get a short grace period, everything produced is flushed, and the exit code is 0.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sqlite3
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from omsd import exitcodes
from omsd.config import Config
from omsd.upload.console import connect, print_error
from omsd.upload.engine import FileEntry, FileJob, Uploader, UploadError, walk_directory

log = structlog.get_logger(__name__)

RESCAN_SECS = 30.0
TICK_SECS = 0.2
RETRY_FAILED_SECS = 60.0
STOP_GRACE_SECS = 10.0
_WATCHED_EVENTS = {"created", "modified", "moved", "closed", "attrib"}


@dataclass(frozen=True)
class Uploaded:
    """What the state file knows about one uploaded file."""

    size: int
    mtime_ns: int
    sha512: bytes


class UploadState:
    """SQLite record of uploaded files: relative path -> size, mtime_ns, sha512."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS uploaded (
            relative_path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            sha512 BLOB NOT NULL, uploaded_at REAL NOT NULL)""")
        self.db.commit()
        rows = self.db.execute("SELECT relative_path, size, mtime_ns, sha512 FROM uploaded")
        self.files: dict[str, Uploaded] = {rel: Uploaded(size, mtime_ns, sha) for rel, size, mtime_ns, sha in rows}

    @property
    def empty(self) -> bool:
        return not self.files

    def record(self, rel: str, size: int, mtime_ns: int, sha512: bytes) -> None:
        self.files[rel] = Uploaded(size, mtime_ns, sha512)
        self.db.execute("INSERT OR REPLACE INTO uploaded VALUES (?, ?, ?, ?, ?)",
                        (rel, size, mtime_ns, sha512, time.time()))
        self.db.commit()

    def matches(self, rel: str, size: int, mtime_ns: int) -> bool:
        known = self.files.get(rel)
        return known is not None and known.size == size and known.mtime_ns == mtime_ns

    def close(self) -> None:
        self.db.close()


def default_state_path(config: Config, root: Path, topic: str) -> Path:
    """state_dir/upload-<hash of directory and topic>.sqlite"""
    digest = hashlib.blake2b(f"{root}\0{topic}".encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
    return config.state_dir / f"upload-{digest}.sqlite"


class _ChangeCollector(FileSystemEventHandler):
    """Collects changed paths from watchdog's thread for the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self.rescan = False

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _WATCHED_EVENTS:
            return
        with self._lock:
            if event.is_directory:
                if event.event_type in ("created", "moved"):
                    self.rescan = True  # files moved in with a directory raise no events of their own
                return
            self._paths.add(os.fsdecode(event.src_path))
            if getattr(event, "dest_path", ""):
                self._paths.add(os.fsdecode(event.dest_path))

    def drain(self) -> tuple[set[str], bool]:
        with self._lock:
            paths, self._paths = self._paths, set()
            rescan, self.rescan = self.rescan, False
        return paths, rescan


def start_observer(root: Path, handler: FileSystemEventHandler) -> BaseObserver:
    """An inotify (or native) observer, or a polling one where that is unavailable."""
    for factory in (Observer, lambda: PollingObserver(timeout=1.0)):
        observer = factory()
        try:
            observer.schedule(handler, str(root), recursive=True)
            observer.start()
            return observer
        except OSError as exc:  # inotify watch/instance limits, unsupported file system
            log.warning("file system notifications unavailable, polling instead", error=str(exc))
    raise UploadError(f"cannot watch {root}")


@dataclass
class _Candidate:
    entry: FileEntry
    size: int
    mtime_ns: int
    since: float


class DirectoryWatcher:
    """Decides which files of one directory to upload, and when."""

    def __init__(self, root: Path, state: UploadState, uploader: Uploader, stable_secs: float,
                 *, quiet: bool = False) -> None:
        self.root = root
        self.state = state
        self.uploader = uploader
        self.stable_secs = stable_secs
        self.quiet = quiet
        self.candidates: dict[str, _Candidate] = {}
        self.in_flight: dict[str, FileJob] = {}
        self.failed: dict[str, tuple[int, int, float]] = {}  # rel -> size, mtime_ns, retry at
        state_file = state.path.resolve()
        self.ignored = {str(state_file), f"{state_file}-wal", f"{state_file}-shm", f"{state_file}-journal"}
        uploader.on_done = self._done

    def entry_for(self, path: str) -> FileEntry | None:
        """The upload entry for an absolute path under the root, or None when it is not uploaded."""
        if path in self.ignored:
            return None
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return None
        if any(part.startswith(".") for part in rel.parts):
            return None
        subdir = rel.parent.as_posix()
        return FileEntry(Path(path), "" if subdir == "." else subdir, rel.name)

    def consider(self, entry: FileEntry, now: float) -> None:
        """Note a possibly new or changed file; it waits until it is stable."""
        try:
            st = entry.path.stat()
        except OSError:
            self.candidates.pop(entry.relative_path, None)
            return
        if not stat.S_ISREG(st.st_mode):
            return
        rel = entry.relative_path
        if rel not in self.in_flight and self.state.matches(rel, st.st_size, st.st_mtime_ns):
            self.candidates.pop(rel, None)
            return
        known = self.candidates.get(rel)
        if known is None or (known.size, known.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.candidates[rel] = _Candidate(entry, st.st_size, st.st_mtime_ns, now)

    def scan(self, now: float) -> None:
        for entry in walk_directory(self.root, skip_hidden=True):
            if str(entry.path) not in self.ignored:
                self.consider(entry, now)

    def mark_all_uploaded(self) -> None:
        """Record every file present now as uploaded without sending it (``--skip-existing``)."""
        for entry in walk_directory(self.root, skip_hidden=True):
            if str(entry.path) in self.ignored:
                continue
            try:
                st = entry.path.stat()
            except OSError:
                continue
            self.state.record(entry.relative_path, st.st_size, st.st_mtime_ns, b"")

    def submit_stable(self, now: float) -> None:
        """Send every candidate whose size and mtime held still for ``stable_secs``."""
        for rel, cand in list(self.candidates.items()):
            if rel in self.in_flight:
                continue
            self.consider(cand.entry, now)  # re-stat: resets the clock on any change
            cand = self.candidates.get(rel)
            if cand is None or now - cand.since < self.stable_secs:
                continue
            failed = self.failed.get(rel)
            if failed is not None and failed[:2] == (cand.size, cand.mtime_ns) and now < failed[2]:
                continue
            del self.candidates[rel]
            known = self.state.files.get(rel)
            skip_if = known.sha512 if known is not None and known.size == cand.size and known.sha512 else None
            self.in_flight[rel] = self.uploader.submit(cand.entry, skip_if_sha512=skip_if)

    def _done(self, job: FileJob) -> None:
        rel = job.entry.relative_path
        self.in_flight.pop(rel, None)
        if job.error is not None:
            # Not again until the file changes (or a while has passed): a file that changed
            # while it was read is retried as soon as it is stable.
            snapshot: tuple[int, int] | None = (job.stat_size, job.mtime_ns) if job.mtime_ns else None
            if snapshot is None:
                try:
                    st = job.entry.path.stat()
                    snapshot = (st.st_size, st.st_mtime_ns)
                except OSError:
                    pass
            if snapshot is not None:
                self.failed[rel] = (*snapshot, time.monotonic() + RETRY_FAILED_SECS)
            print_error(f"{rel}: {job.error} (will retry when it changes or in {RETRY_FAILED_SECS:g}s)")
            self.consider(job.entry, time.monotonic())
            return
        self.failed.pop(rel, None)
        self.state.record(rel, job.stat_size, job.mtime_ns, job.sha512)
        if not self.quiet and not job.skipped:
            print(f"uploaded {rel} ({job.size} bytes, {job.n_total} chunks)", file=sys.stderr, flush=True)
        # A change during the upload left the file a candidate; look again next tick.
        self.consider(job.entry, time.monotonic())


def watch_command(args: argparse.Namespace, config: Config) -> int:
    """Run ``omsd upload --watch DIR`` until SIGTERM/SIGINT."""
    root = args.paths[0].resolve()
    state_path = args.state or default_state_path(config, root, args.topic)
    connected = connect(config, args)
    if connected is None:
        return exitcodes.RET_ERROR
    producer, partitions = connected
    try:
        state = UploadState(Path(state_path))
    except (OSError, sqlite3.Error) as exc:
        print_error(f"cannot open the state file {state_path}: {exc}")
        return exitcodes.RET_ERROR

    stop: list[int] = []

    def record_signal(signum: int, _frame: object) -> None:
        stop.append(signum)

    previous = {sig: signal.signal(sig, record_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    uploader = Uploader(producer, args.topic, chunk_size=args.chunk_size, partitions=partitions,
                        readers=args.readers)
    watcher = DirectoryWatcher(root, state, uploader, args.stable_secs, quiet=args.quiet)
    collector = _ChangeCollector()
    try:
        if args.skip_existing and state.empty:
            watcher.mark_all_uploaded()
        observer = start_observer(root, collector)
    except UploadError as exc:
        print_error(str(exc))
        return exitcodes.RET_ERROR
    if not args.quiet:
        print(f"watching {root} for files to upload to '{args.topic}' (state {state_path})",
              file=sys.stderr, flush=True)
    log.info("watching", root=str(root), topic=args.topic, state=str(state_path), observer=type(observer).__name__)
    next_rescan = 0.0
    try:
        while not stop:
            now = time.monotonic()
            paths, rescan = collector.drain()
            if rescan or now >= next_rescan:
                watcher.scan(now)
                next_rescan = now + RESCAN_SECS
            for path in paths:
                entry = watcher.entry_for(path)
                if entry is not None:
                    watcher.consider(entry, now)
            watcher.submit_stable(now)
            uploader.pump(TICK_SECS)
        # Graceful stop: no new files; let files being sent finish for a moment, then flush.
        deadline = time.monotonic() + STOP_GRACE_SECS
        while not uploader.idle and time.monotonic() < deadline and len(stop) < 2:
            uploader.pump(0.1)
        if not uploader.idle:
            uploader.abort()
        left = uploader.finish(timeout=STOP_GRACE_SECS)
    finally:
        observer.stop()
        observer.join(timeout=5)
        state.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if left:
        print_error(f"{left} messages were not acknowledged before stopping")
        return exitcodes.RET_ERROR
    if not args.quiet:
        print("stopped", file=sys.stderr, flush=True)
    return exitcodes.RET_OK
