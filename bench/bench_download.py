"""Download throughput: raw consumer vs OpenMSIStream's DataFileDownloadDirectory vs `omsd download`.

One run, one fresh embedded broker, one topic, one data set produced once.
Each reader is a separate process with its own consumer group and
``session.timeout.ms`` 2000; each is timed from its launch until every file
is complete and verified (the sha512 of every output file compared with the
source; for the raw consumer: every message read).

    .venv/bin/python bench/bench_download.py            # 48 files x 25 MiB (~1.26 GB)
    .venv/bin/python bench/bench_download.py --quick    # 8 files x 8 MiB
    .venv/bin/python bench/bench_download.py --files 96 --size-mib 10 --only omsd --only raw
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from inotify_watch import TreeWatch  # noqa: E402
from diskprobe import describe_disk  # noqa: E402
from precompile import compile_sources  # noqa: E402

SESSION_TIMEOUT_MS = 2000
HEARTBEAT_INTERVAL_MS = 500
CHUNK_SIZE = 524288  # OpenMSIStream's default
POLL_S = 0.02
READERS = ("raw", "openmsistream", "omsd")
TARGET_VS_OMS, TARGET_VS_RAW = 2.3, 0.85  # the large-file targets: omsd MB/s over each reader's


@dataclass(frozen=True)
class SourceFile:
    """One generated input file."""

    path: Path
    relative_path: str
    size: int
    sha512: bytes


# -- data set ----------------------------------------------------------------------------------------
def generate(root: Path, n_files: int, size: int | Sequence[int], block: int = 8 << 20,
             stem: str = "file") -> list[SourceFile]:
    """``n_files`` files of random bytes under ``root`` (in a few subdirectories), named
    ``run<i % 4>/<stem>_<i>.bin``; ``size`` is one size for all or one per file."""
    sizes = [size] * n_files if isinstance(size, int) else list(size)
    files = []
    for i in range(n_files):
        rel = f"run{i % 4}/{stem}_{i:04d}.bin" if n_files > 1 else f"{stem}_{i:04d}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha512()
        with open(path, "wb") as handle:
            left = sizes[i]
            while left:
                data = os.urandom(min(block, left))
                digest.update(data)
                handle.write(data)
                left -= len(data)
        files.append(SourceFile(path, rel, sizes[i], digest.digest()))
    return files


def chunk_stream(source: SourceFile, chunk_size: int = CHUNK_SIZE) -> Iterator[tuple[str, bytes]]:
    """(key, value) of every chunk of one file in the OpenMSIStream format, read lazily."""
    from omsd.wire.protocol import chunk_key, encode_chunk

    subdir, _, name = source.relative_path.rpartition("/")
    n_chunks = max(1, -(-source.size // chunk_size))
    mtime = source.path.stat().st_mtime
    with open(source.path, "rb") as handle:
        for i in range(1, n_chunks + 1):
            offset = (i - 1) * chunk_size
            data = handle.read(chunk_size)
            yield (chunk_key(subdir, name, i, n_chunks),
                   encode_chunk(filename=name, file_hash=source.sha512, data=data, offset=offset, chunk_i=i,
                                n_total_chunks=n_chunks, subdir_str=subdir, file_mtime=mtime))


def produce_omsd_format(bootstrap: str, topic: str, files: Iterable[SourceFile], chunk_size: int = CHUNK_SIZE) -> int:
    """Produce every chunk with no partition set (librdkafka's key-hash partitioner spreads a file's
    chunks over all partitions, as the stock OpenMSIStream producer does). Returns the message count."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 4 << 20,
                         "message.max.bytes": 64 << 20, "queue.buffering.max.kbytes": 256 * 1024})
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    count = 0
    for source in files:
        for key, value in chunk_stream(source, chunk_size):
            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            count += 1
    if producer.flush(120) != 0:
        raise KafkaException("not every chunk was acknowledged within 120 s")
    if errors:
        raise RuntimeError(f"{len(errors)} chunks not delivered: {errors[0]}")
    return count


def write_oms_ini(path: Path, bootstrap: str, group_id: str | None = None) -> Path:
    """An OpenMSIStream INI config for the embedded broker."""
    from tests.openmsistream_support import openmsistream_ini

    producer = {"key.serializer": "StringSerializer", "value.serializer": "DataFileChunkSerializer",
                "message.max.bytes": 67108864}
    return openmsistream_ini(path, bootstrap, group_id=group_id or "create_new", producer=producer,
                             session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS)


def produce_openmsistream(bootstrap: str, topic: str, root: Path, files: list[SourceFile], work: Path,
                          chunk_size: int = CHUNK_SIZE) -> None:
    """Upload every file with OpenMSIStream's own UploadDataFile (stock producer, stock partitioning)."""
    import logging

    from openmsistream.data_file_io.entity.upload_data_file import UploadDataFile

    ini = write_oms_ini(work / "oms-upload.config", bootstrap)
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for source in files:
        upload = UploadDataFile(source.path, rootdir=root, logger_file=log_dir, streamlevel=logging.WARNING)
        upload.upload_whole_file(ini, topic, chunk_size=chunk_size)


# -- the readers -------------------------------------------------------------------------------------
def raw_consumer_main(bootstrap: str, topic: str, group_id: str, expected_messages: int) -> int:
    """Child process: read every message of ``topic``, print 'done' when all are in."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group_id, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
        "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 64 << 20,
        "receive.message.max.bytes": 65 << 20,
    })
    consumer.subscribe([topic])
    n_messages = n_bytes = 0
    while n_messages < expected_messages:
        for msg in consumer.consume(num_messages=500, timeout=0.1):
            if msg.error() is None:
                n_messages += 1
                n_bytes += len(msg.value() or b"")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"done {n_messages} {n_bytes} {usage.ru_utime + usage.ru_stime:.1f}", flush=True)
    consumer.close()
    return 0


class Verifier:
    """Watches an output directory and says when every file was complete with the source's content.

    :meth:`observe` is cheap and remembers when each version of a file (size, mtime, inode) was first
    seen at the source's size: with inotify (Linux) it ``stat``-s only the files named by events since
    the previous round (and lists the directories every ``recheck_every`` rounds), otherwise it lists
    each directory every round. :meth:`verify` hashes the newest
    version seen, and a file counts as complete from the moment that version was first seen, provided
    its sha512 matches the source's and the file did not change while it was hashed. The hashing
    therefore waits until every file has been seen at full size and may finish after the program did,
    without adding to the measured time. (A program that writes a file in place can reach the full
    size before the last write; the version seen then fails the hash, and the final one counts.)
    :meth:`close` releases the inotify descriptor.
    """

    def __init__(self, out_dir: Path, files: list[SourceFile], recheck_every: int = 1) -> None:
        self.out_dir = out_dir
        self.pending = {f.relative_path: f for f in files}
        self.seen: dict[str, tuple[tuple[int, int, int], float]] = {}  # newest version and when first seen
        self.complete_at: dict[str, float] = {}
        self.tried: dict[str, tuple[int, int, int]] = {}
        self.lock = threading.Lock()
        # Files already seen at full size are looked at again only when an event names them and, as a
        # safety net (or without inotify: only), every ``recheck_every`` rounds (a later version is then
        # noticed up to that many rounds late): with thousands of files, a stat of each one every round
        # would take the CPU the program under test needs.
        self.recheck_every = max(1, recheck_every)
        self._rounds = 0
        self._by_dir: dict[Path, dict[str, str]] = {}  # directory -> {file name: relative path}
        for rel in self.pending:
            path = out_dir / rel
            self._by_dir.setdefault(path.parent, {})[path.name] = rel
        # The watch's paths are normalised ("a/b"); the sources' relative paths are looked up through this.
        self._by_event_path = {os.path.normpath(rel): rel for rel in self.pending}
        self._watch: TreeWatch | None = None
        # False without inotify, after close(), or when every round lists anyway (recheck_every 1).
        self._inotify = self.recheck_every > 1
        self._observing = threading.Lock()  # one observe() at a time: the watch is not thread-safe

    def _stamp(self, rel: str) -> tuple[int, int, int] | None:
        try:
            st = (self.out_dir / rel).stat()
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def close(self) -> None:
        """Stop watching (observe() lists directories from then on)."""
        with self._observing:
            self._inotify = False
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def observe(self) -> None:
        """Note the time at which each file's current version was first seen at full size.

        The first round (and one after the kernel dropped events) lists each directory and ``stat``-s
        only the files it holds (a missing file costs nothing); later rounds ``stat`` only the files
        still awaited that inotify events named, except every ``recheck_every``-th round, which lists
        again as a safety net.
        """
        now = time.monotonic()
        with self._observing:
            self._rounds += 1
            recheck = self._rounds % self.recheck_every == 0
            changed, lost = self._changes()
            if changed is None or recheck:
                with self.lock:
                    skip = set(self.complete_at) if recheck or lost else set(self.complete_at) | set(self.seen)
                self._scan(skip, now)
                return
            # Any event may mean a new version, of a file already seen too: all but the complete ones.
            with self.lock:
                wanted = [rel for rel in map(self._by_event_path.get, changed)
                          if rel is not None and rel not in self.complete_at]
            for rel in wanted:
                try:
                    st = os.stat(self.out_dir / rel)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                self._note(rel, st, now)

    def _changes(self) -> tuple[set[str] | None, bool]:
        """(the paths named by events since the last round, or None to list every directory; whether
        events were lost, so that files already seen must be looked at again too)."""
        if self._watch is None:
            if self._inotify:
                try:
                    # Made before this round's listing, so that whatever changes after the listing
                    # looked at a file makes an event.
                    self._watch = TreeWatch(self.out_dir)
                except OSError:
                    self._inotify = False
            return None, False
        try:
            changes = self._watch.changed()
        except OSError:  # e.g. out of watches (fs.inotify.max_user_watches): list directories from now on
            self._watch.close()
            self._watch, self._inotify = None, False
            return None, True
        return (None, True) if changes.overflow else (changes.paths, False)

    def _scan(self, skip: set[str], now: float) -> None:
        """List each directory and ``stat`` the awaited files in it that are not in ``skip``."""
        for directory, names in self._by_dir.items():
            try:
                entries = os.scandir(directory)
            except FileNotFoundError:
                continue
            with entries:
                for entry in entries:
                    rel = names.get(entry.name)
                    if rel is None or rel in skip:
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    self._note(rel, st, now)

    def _note(self, rel: str, st: os.stat_result, now: float) -> None:
        """Remember this version of ``rel`` if it has the source's size and was not seen before."""
        if st.st_size != self.pending[rel].size:
            return
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self.lock:
            if self.seen.get(rel, (None,))[0] != stamp:
                self.seen[rel] = (stamp, now)

    def verify(self) -> bool:
        """Hash each file's newest version not hashed yet; True once every file is complete.

        Nothing is hashed before every file has been seen at full size: until then the program
        under test is still working, and the hashing would take CPU time from it.
        """
        with self.lock:
            if len(self.seen) < len(self.pending):
                return False
            candidates = [(rel, *self.seen[rel]) for rel in self.pending
                          if rel in self.seen and rel not in self.complete_at and self.tried.get(rel) != self.seen[rel][0]]
        for rel, stamp, first_seen in candidates:
            self.tried[rel] = stamp
            ok = sha512_file(self.out_dir / rel) == self.pending[rel].sha512
            if ok and self._stamp(rel) == stamp:
                with self.lock:
                    self.complete_at[rel] = first_seen
        with self.lock:
            return len(self.complete_at) == len(self.pending)

    def check(self) -> bool:
        """Observe and verify in one go (for callers that poll from one thread)."""
        self.observe()
        return self.verify()

    def finished_at(self) -> float:
        return max(self.complete_at.values())

    def first_at(self) -> float:
        """When the first file was seen complete (the end of the reader's start-up and group join)."""
        return min(self.complete_at.values())


def host_speed() -> str:
    """How fast this host runs the two kinds of work the readers do, for comparing runs across hosts and
    days: a pure-Python loop (omsd's supervisor and workers, OpenMSIStream) and OpenSSL's sha512."""
    start = time.perf_counter()
    acc = 0
    for i in range(2_000_000):
        acc = (acc + i * i) % 1_000_003
    loop_s = time.perf_counter() - start
    block = os.urandom(64 << 20)
    start = time.perf_counter()
    hashlib.sha512(block).digest()
    sha_mb_s = len(block) / 1e6 / (time.perf_counter() - start)
    return f"host speed: 2M-step Python loop {loop_s * 1e3:.0f} ms, sha512 {sha_mb_s:.0f} MB/s"


def sha512_file(path: Path, block: int = 8 << 20) -> bytes:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            digest.update(data)
    return digest.digest()


@dataclass
class Timing:
    reader: str
    seconds: float
    n_bytes: int
    note: str = ""
    first_s: float | None = None  # from launch until the first file was complete (start-up and group join)

    @property
    def mb_per_s(self) -> float:
        return self.n_bytes / 1e6 / self.seconds


def wait_verified(proc: subprocess.Popen, verifier: Verifier, started: float, timeout: float, what: str,
                  log_path: Path) -> float:
    """Seconds from ``started`` until every file was complete (see :class:`Verifier`).

    Raises if the process dies or time runs out first. This thread observes the output every
    ``POLL_S``; the hashing runs in a second thread at the lowest CPU priority, so that on a small
    machine it takes CPU only when the program under test leaves some, and it may finish after the
    program did without changing the result.
    """
    done = threading.Event()
    stop = threading.Event()

    def check() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        while not stop.is_set():
            if verifier.verify():
                done.set()
                return
            stop.wait(POLL_S)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    deadline = started + timeout
    try:
        while not done.wait(POLL_S):
            verifier.observe()
            if proc.poll() is not None and not done.wait(5):
                raise RuntimeError(f"{what} exited with {proc.returncode} before all files were verified; "
                                   f"log: {log_path}\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {len(verifier.pending) - len(verifier.complete_at)} files not verified "
                                   f"after {timeout:.0f} s; log: {log_path}\n{tail(log_path)}")
    finally:
        stop.set()
        thread.join()
    return verifier.finished_at() - started


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def time_raw(bootstrap: str, topic: str, group_id: str, n_messages: int, n_bytes: int, work: Path,
             timeout: float) -> Timing:
    log_path = work / "logs" / "raw.log"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_raw", bootstrap, topic, group_id,
                             str(n_messages)], stdout=subprocess.PIPE, stderr=open(log_path, "wb"), cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    elapsed = time.monotonic() - started
    proc.wait(timeout)
    if not line.startswith("done"):
        raise RuntimeError(f"raw consumer failed: {line!r}\n{tail(log_path)}")
    _, n_read, _, cpu = line.split()
    return Timing("raw confluent-kafka consumer", elapsed, n_bytes, f"CPU s: {cpu}; {n_read} messages, no files")


def time_openmsistream(bootstrap: str, topic: str, group_id: str, files: list[SourceFile], work: Path,
                       threads: int, timeout: float, then: Callable[[Path], None] | None = None,
                       recheck_every: int = 1) -> Timing:
    """Time DataFileDownloadDirectory until every file is verified; ``then(out_dir)`` runs while it still
    runs (after its CPU time was taken), before it is stopped."""
    from tests.openmsistream_support import quit_openmsistream

    out = work / "out-openmsistream"
    ini = write_oms_ini(work / "oms-download.config", bootstrap, group_id)
    log_path = work / "logs" / "openmsistream.log"
    cmd = [sys.executable, "-m", "openmsistream.data_file_io.actor.data_file_download_directory", str(out),
           "--config", str(ini), "--topic_name", topic, "--consumer_group_id", group_id, "--n_threads", str(threads)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            cwd=work)
    verifier = Verifier(out, files, recheck_every)
    try:
        elapsed = wait_verified(proc, verifier, started, timeout, "DataFileDownloadDirectory", log_path)
        cpu = cpu_seconds(proc.pid)
        if then:
            then(out)
    finally:
        verifier.close()
        quit_openmsistream(proc)
    return Timing(f"OpenMSIStream DataFileDownloadDirectory ({threads} threads)", elapsed,
                  sum(f.size for f in files), f"CPU s: {cpu['supervisor'] + cpu['workers']:.1f}",
                  first_s=verifier.first_at() - started)


def write_omsd_config(path: Path, bootstrap: str, state_dir: Path, workers: int, memory: str = "512MiB") -> Path:
    path.write_text(f"""broker:
  bootstrap.servers: {bootstrap}
consumer:
  session.timeout.ms: {SESSION_TIMEOUT_MS}
  heartbeat.interval.ms: {HEARTBEAT_INTERVAL_MS}
state_dir: {state_dir}
workers: {workers}
staging:
  memory_bytes: {memory}
""")
    return path


def start_omsd_download(out: Path, config: Path, topic: str, group_id: str, log_path: Path,
                        workers: int | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "omsd.cli", "download", str(out), "--config", str(config), "--topic", topic,
           "--consumer_group_id", group_id]
    if workers:
        cmd += ["--workers", str(workers)]
    return subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user+system) used so far by a process and, separately, by its descendants."""
    import psutil

    try:
        own = process_cpu(pid)
        children = 0.0
        for child in psutil.Process(pid).children(recursive=True):
            try:
                children += process_cpu(child.pid)
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        return {"supervisor": 0.0, "workers": 0.0}
    return {"supervisor": own, "workers": children}


def stop_omsd(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Graceful stop (SIGTERM); SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def time_omsd(bootstrap: str, topic: str, group_id: str, files: list[SourceFile], work: Path, workers: int,
              timeout: float, on_start: Callable[[subprocess.Popen], None] | None = None,
              then: Callable[[Path], None] | None = None, recheck_every: int = 1) -> Timing:
    """Time `omsd download` until every file is verified; ``then(out_dir)`` runs while it still runs
    (after its CPU time was taken), before it is stopped."""
    out = work / "out-omsd"
    config = write_omsd_config(work / "omsd.yaml", bootstrap, work / "omsd-state", workers)
    log_path = work / "logs" / "omsd.log"
    started = time.monotonic()
    proc = start_omsd_download(out, config, topic, group_id, log_path, workers)
    if on_start:
        on_start(proc)
    verifier = Verifier(out, files, recheck_every)
    try:
        elapsed = wait_verified(proc, verifier, started, timeout, "omsd download", log_path)
        cpu = cpu_seconds(proc.pid)
        if then:
            then(out)
    finally:
        verifier.close()
        code = stop_omsd(proc)
    note = f"CPU s: supervisor {cpu['supervisor']:.1f}, workers {cpu['workers']:.1f}"
    if code != 0:
        note += f"; exit code {code} after SIGTERM"
    return Timing(f"omsd download ({workers} workers)", elapsed, sum(f.size for f in files), note,
                  first_s=verifier.first_at() - started)


class Profiler:
    """py-spy record of a process and its children, in collapsed-stack text."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.proc: subprocess.Popen | None = None

    def attach(self, target: subprocess.Popen) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen([py_spy, "record", "--pid", str(target.pid), "--subprocesses", "--rate", "200",
                                      "--format", "raw", "--output", str(self.output), "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self) -> Path:
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(10)
        return self.output


# -- main --------------------------------------------------------------------------------------------
def add_reader_options(parser: argparse.ArgumentParser) -> None:
    """The options of every reader comparison (this one and bench_small): workers, readers, time-out, work dir."""
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="omsd workers (CPU count)")
    parser.add_argument("--oms-threads", type=int, default=os.cpu_count() or 1,
                        help="DataFileDownloadDirectory --n_threads (CPU count)")
    parser.add_argument("--only", action="append", choices=READERS, help="run only these readers (repeatable)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds each reader may take")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep data, outputs and logs here")
    parser.add_argument("--profile", action="store_true",
                        help="record omsd with py-spy (supervisor and workers) into WORK/profile-omsd.txt")


def work_dir(args: argparse.Namespace, prefix: str) -> Path:
    """--work-dir, or a new temporary directory; with its logs/ subdirectory."""
    work = args.work_dir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    return work


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=48, help="number of files (default 48)")
    parser.add_argument("--size-mib", type=float, default=25, help="size of each file in MiB (default 25)")
    parser.add_argument("--quick", action="store_true", help="8 files x 8 MiB")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    parser.add_argument("--producer", choices=("openmsistream", "omsd"), default="openmsistream",
                        help="who produces the data set: OpenMSIStream's UploadDataFile (default) or a plain "
                             "producer writing the same format with no partition set")
    add_reader_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.size_mib = 8, 8
    return args


def run(args: argparse.Namespace) -> list[Timing]:
    from omsd.dev.broker import EmbeddedBroker

    work = work_dir(args, "omsd-bench-")
    size = int(args.size_mib * (1 << 20))
    print(f"work dir: {work}")
    print(f"CPUs: {os.cpu_count()}   python: {sys.version.split()[0]}")
    print(host_speed())
    print(describe_disk(work))
    t = time.monotonic()
    files = generate(work / "data", args.files, size)
    total = sum(f.size for f in files)
    n_chunks = sum(max(1, -(-f.size // args.chunk_size)) for f in files)
    print(f"data set: {len(files)} files x {size / (1 << 20):g} MiB = {total / 1e6:.0f} MB, "
          f"{n_chunks} chunks of {args.chunk_size} bytes (generated in {time.monotonic() - t:.1f} s)")
    broker = EmbeddedBroker(data_dir=work / "broker")
    broker.start()
    try:
        topic = "bench_download"
        t = time.monotonic()
        if args.producer == "openmsistream":
            produce_openmsistream(broker.bootstrap, topic, work / "data", files, work, args.chunk_size)
            how = "OpenMSIStream UploadDataFile (stock producer, no partition: chunks spread by key hash)"
        else:
            produce_omsd_format(broker.bootstrap, topic, files, args.chunk_size)
            how = "plain producer, partition=None (chunks spread by key hash, like the stock producer)"
        produced_s = time.monotonic() - t
        print(f"produced once with {how}: {produced_s:.1f} s, {total / 1e6 / produced_s:.0f} MB/s")
        readers = args.only or list(READERS)
        timings = []
        run_id = os.urandom(3).hex()
        for reader in READERS:
            if reader not in readers:
                continue
            group = f"bench-{reader}-{run_id}"
            print(f"timing {reader} (load average {os.getloadavg()[0]:.1f}) ...", flush=True)
            broker_cpu = process_cpu(broker.process.pid)
            if reader == "raw":
                timing = time_raw(broker.bootstrap, topic, group, n_chunks, total, work, args.timeout)
            elif reader == "openmsistream":
                timing = time_openmsistream(broker.bootstrap, topic, group, files, work, args.oms_threads,
                                            args.timeout)
            else:
                profiler = Profiler(work / "profile-omsd.txt") if args.profile else None
                timing = time_omsd(broker.bootstrap, topic, group, files, work, args.workers, args.timeout,
                                   on_start=profiler.attach if profiler else None)
                if profiler:
                    print(f"  profile: {profiler.finish()}")
            timing.note += f"; broker {process_cpu(broker.process.pid) - broker_cpu:.1f}"
            print(f"  {timing.seconds:.2f} s  {timing.mb_per_s:.0f} MB/s  {timing.note}", flush=True)
            timings.append(timing)
    finally:
        broker.stop()
    report(timings, total)
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return timings


def report(timings: list[Timing], total: int) -> None:
    print()
    print(f"{'reader':52} {'seconds':>8} {'MB/s':>8}")
    for timing in timings:
        print(f"{timing.reader:52} {timing.seconds:8.2f} {timing.mb_per_s:8.0f}")
    by = {t.reader.split()[0]: t for t in timings}
    omsd, oms, raw = by.get("omsd"), by.get("OpenMSIStream"), by.get("raw")
    if omsd and oms:
        ratio = omsd.mb_per_s / oms.mb_per_s
        print(f"omsd / OpenMSIStream = {ratio:.2f}x  (target >= {TARGET_VS_OMS}x: "
              f"{'met' if ratio >= TARGET_VS_OMS else 'MISSED'})")
    if omsd and raw:
        ratio = omsd.mb_per_s / raw.mb_per_s
        print(f"omsd / raw consumer  = {ratio:.2f}x  (target >= {TARGET_VS_RAW}x: "
              f"{'met' if ratio >= TARGET_VS_RAW else 'MISSED'})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_raw"]:
        bootstrap, topic, group, expected = argv[1:5]
        return raw_consumer_main(bootstrap, topic, group, int(expected))
    args = parse_args(argv)
    compile_sources()
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
