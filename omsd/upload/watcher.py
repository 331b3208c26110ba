"""`omsd upload --watch DIR`: keep uploading files that appear or change in a directory.

Like OpenMSIStream's DataFileUploadDirectory, with a memory: a file is sent
once its size and mtime have been unchanged for ``--stable-secs``, and the
state file (SQLite) remembers each uploaded file's size, mtime and sha512 so
a restart sends nothing twice. A changed file is sent again in full; a file
whose mtime changed but whose content did not is only re-recorded. Files
already present at the very first start are recorded as uploaded without
being sent unless ``--upload-existing`` (OpenMSIStream's default); files that
appear while the watcher is stopped are sent when it starts again.

watchdog (inotify, or polling where inotify is unavailable or
``--use-polling-observer`` asks for it) reports changes; a periodic rescan of
the tree is the safety net for anything it missed. Only relative paths that
``--upload-regex`` matches are sent; hidden files and directories (names
starting with '.', e.g. rsync's temporary files) never are. A name that cannot
travel (not UTF-8, a backslash) is skipped with one warning and counted; it never
reaches the state file. SIGTERM/SIGINT stop the watcher: files already being sent
get a short grace period, everything produced is flushed, and the exit code is 0.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import signal
import sqlite3
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from confluent_kafka import Producer
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from omsd import exitcodes
from omsd.config import Config
from omsd.telemetry.options import resolve
from omsd.telemetry.units import MB
from omsd.upload.console import connect, print_error
from omsd.crypto.node import CryptoNode
from omsd.upload.keys import open_node_or_report
from omsd.upload.engine import FileJob, Uploader, UploadError
from omsd.upload.files import OPENMSISTREAM_UPLOAD_REGEX, FileEntry, display_path, walk_directory
from omsd.upload.telemetry import UploadTelemetry

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
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()
        rows = self.db.execute("SELECT relative_path, size, mtime_ns, sha512 FROM uploaded")
        self.files: dict[str, Uploaded] = {rel: Uploaded(size, mtime_ns, sha) for rel, size, mtime_ns, sha in rows}
        started = self.db.execute("SELECT value FROM meta WHERE key = 'first_start'").fetchone()
        # A state file from before the meta table has seen a start if it recorded anything.
        self.started_before = started is not None or bool(self.files)

    def mark_started(self) -> None:
        """Remember that the watcher has started on this directory (``--upload-existing`` applies only before)."""
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('first_start', ?)", (str(time.time()),))
        self.db.commit()
        self.started_before = True

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


def start_observer(root: Path, handler: FileSystemEventHandler, *, polling: bool = False) -> BaseObserver:
    """An inotify (or native) observer, or a polling one where that is unavailable or asked for."""
    factories = [lambda: PollingObserver(timeout=1.0)]
    if not polling:
        factories.insert(0, Observer)
    for factory in factories:
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
                 *, match: re.Pattern[str] | None = None, telemetry: UploadTelemetry | None = None,
                 quiet: bool = False) -> None:
        self.root = root
        self.state = state
        self.uploader = uploader
        self.stable_secs = stable_secs
        self.match = match
        self.telemetry = telemetry
        self.quiet = quiet
        self.skipped: set[str] = set()  # names that cannot travel, warned about once
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
        if self.match is not None and not self.match.match(rel.as_posix()):
            return None
        subdir = rel.parent.as_posix()
        return FileEntry(Path(path), "" if subdir == "." else subdir, rel.name)

    def _sendable(self, entry: FileEntry) -> bool:
        """False for a name that cannot travel; the first time, say so (stderr and log topic)."""
        reason = entry.cannot_travel()
        if reason is None:
            return True
        rel = entry.relative_path
        if rel not in self.skipped:
            self.skipped.add(rel)
            self._say(logging.WARNING, f"skipped {display_path(rel)}: {reason}", error=True)
        return False

    def _say(self, level: int, line: str, *, error: bool = False) -> None:
        if error:
            print_error(line)
        elif not self.quiet:
            print(line, file=sys.stderr, flush=True)
        if self.telemetry is not None:
            self.telemetry.report(level, line)

    def consider(self, entry: FileEntry, now: float) -> None:
        """Note a possibly new or changed file; it waits until it is stable."""
        try:
            st = entry.path.stat()
        except OSError:
            self.candidates.pop(entry.relative_path, None)
            return
        if not stat.S_ISREG(st.st_mode) or not self._sendable(entry):
            return
        rel = entry.relative_path
        if rel not in self.in_flight and self.state.matches(rel, st.st_size, st.st_mtime_ns):
            self.candidates.pop(rel, None)
            return
        known = self.candidates.get(rel)
        if known is None or (known.size, known.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.candidates[rel] = _Candidate(entry, st.st_size, st.st_mtime_ns, now)

    def scan(self, now: float) -> None:
        for entry in walk_directory(self.root, skip_hidden=True, match=self.match):
            if str(entry.path) not in self.ignored:
                self.consider(entry, now)

    def mark_all_uploaded(self) -> None:
        """Record every file present now as uploaded without sending it (the default first start)."""
        for entry in walk_directory(self.root, skip_hidden=True, match=self.match):
            if str(entry.path) in self.ignored or entry.cannot_travel() is not None:
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
            self._say(logging.WARNING, f"{display_path(rel)}: {job.error} "
                                       f"(will retry when it changes or in {RETRY_FAILED_SECS:g}s)", error=True)
            self.consider(job.entry, time.monotonic())
            return
        self.failed.pop(rel, None)
        self.state.record(rel, job.stat_size, job.mtime_ns, job.sha512)
        if not job.skipped:
            self._say(logging.INFO, f"uploaded {display_path(rel)} ({job.size} bytes, {job.n_total} chunks)")
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
    ok, node = open_node_or_report(config, args.topic)  # encrypted topics: it answers key requests while we watch
    if not ok:
        return exitcodes.RET_CONFIG
    try:
        return _watch(args, config, root, state_path, producer, partitions, node)
    finally:
        if node is not None:
            node.close()


def _watch(args: argparse.Namespace, config: Config, root: Path, state_path: Path, producer: Producer,
           partitions: int | None, node: CryptoNode | None) -> int:
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
                        readers=args.readers, queue_bytes=args.queue_mb * MB,
                        encrypt=node.encrypt if node is not None else None)
    telemetry = UploadTelemetry(producer, uploader.acked, *resolve(config, args),
                                encrypt=node.encrypt if node is not None else None)
    match = args.upload_regex if args.upload_regex is not None else re.compile(OPENMSISTREAM_UPLOAD_REGEX)
    watcher = DirectoryWatcher(root, state, uploader, args.stable_secs, match=match, telemetry=telemetry,
                               quiet=args.quiet)
    collector = _ChangeCollector()
    try:
        if not state.started_before:
            if not args.upload_existing:
                watcher.mark_all_uploaded()
            state.mark_started()
        observer = start_observer(root, collector, polling=args.use_polling_observer)
    except UploadError as exc:
        print_error(str(exc))
        return exitcodes.RET_ERROR
    if not args.quiet:
        how = " (polling)" if isinstance(observer, PollingObserver) else ""
        print(f"watching {root}{how} for files to upload to '{args.topic}' (state {state_path})",
              file=sys.stderr, flush=True)
    log.info("watching", root=str(root), topic=args.topic, state=str(state_path), observer=type(observer).__name__)
    next_rescan = 0.0
    try:
        while not stop:
            telemetry.tick(time.monotonic())
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
        telemetry.close()  # a last heartbeat, counting every delivery above, and the remaining log lines
        producer.flush(STOP_GRACE_SECS)
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
        skipped = f" ({len(watcher.skipped)} files skipped: names that cannot travel)" if watcher.skipped else ""
        print(f"stopped{skipped}", file=sys.stderr, flush=True)
    return exitcodes.RET_OK
