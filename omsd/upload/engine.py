"""The upload engine: read, hash and encode files in threads; produce every chunk, acknowledged.

Reader threads open, hash and encode files (hashlib releases the GIL) and
hand finished messages to the producing thread through a bounded queue, so
memory stays bounded while reading, hashing and producing overlap. Every chunk
of a file goes to one partition, ``shard_for(relative_path, partitions)``,
unless the file-affine partitioning is turned off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from omsd.config import Config
from omsd.kafka import KAFKA_LOG, make_producer, producer_config
from omsd.telemetry.heartbeat import Counters
from omsd.upload.files import FileEntry, display_path
from omsd.wire.paths import UnsafePathError
from omsd.wire.protocol import DEFAULT_CHUNK_SIZE, EMPTY_SHA512, chunk_key, encode_chunk
from omsd.wire.sharding import shard_for

log = structlog.get_logger(__name__)

# Files up to this size are read once and kept in memory until sent; larger
# ones are hashed in a first pass and read again chunk by chunk.
IN_MEMORY_FILE_BYTES = 64 << 20
# Encoded chunks waiting between the reader threads and the producer.
CHUNK_QUEUE_BYTES = 64 << 20
DEFAULT_CONNECT_TIMEOUT = 15.0
# Every bootstrap server refusing the connection this many times, for at least REFUSED_AFTER_S, means nothing
# listens there: fail then instead of waiting out the connect timeout (which stays for a broker that is silent).
QUICK_REFUSALS = 3
REFUSED_AFTER_S = 1.0
ASK_EVERY_S = 0.25
class UploadError(RuntimeError):
    """A problem that stops the whole upload (broker unreachable, missing topic)."""


@dataclass(eq=False)
class FileJob:
    """One file's upload: filled in by a reader thread, completed by delivery reports."""

    entry: FileEntry
    skip_if_sha512: bytes | None = None
    size: int = 0  # bytes sent
    stat_size: int = 0  # size and mtime when the file was opened
    mtime_ns: int = 0
    sha512: bytes = b""
    n_total: int = 0
    n_produced: int = 0
    n_acked: int = 0
    n_failed: int = 0
    read_done: bool = False
    skipped: bool = False  # content unchanged since ``skip_if_sha512``; nothing sent
    error: str | None = None
    finished: bool = False
    on_done: Callable[["FileJob"], None] | None = field(default=None, repr=False)
    on_acked: Callable[[int], None] | None = field(default=None, repr=False)

    def delivered(self, err: KafkaError | None, msg) -> None:
        """Delivery report of one chunk (called on the producing thread)."""
        if err is None:
            self.n_acked += 1
            if self.on_acked is not None:
                self.on_acked(len(msg))
        else:
            self.n_failed += 1
            if self.error is None:
                self.error = f"chunk not acknowledged: {err.str()}"
        self.check_finished()

    def check_finished(self) -> None:
        if self.finished or not self.read_done or self.n_acked + self.n_failed < self.n_produced:
            return
        self.finished = True
        if self.on_done is not None:
            self.on_done(self)


class Uploader:
    """Reads, hashes and sends files; one producing thread (the caller's), N reader threads.

    ``submit`` queues files; the caller drives sending with ``pump`` and ends
    with ``finish``. ``on_done(job)`` runs on the caller's thread for every file.
    ``acked`` counts the chunk messages the broker acknowledged (bytes: their
    value's length, as OpenMSIStream's heartbeats count them).
    """

    def __init__(self, producer: Producer, topic: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 partitions: int | None = None, readers: int = 2,
                 on_done: Callable[[FileJob], None] | None = None, queue_bytes: int = CHUNK_QUEUE_BYTES,
                 encrypt: Callable[[str, str, bytes], tuple[bytes | None, bytes]] | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.chunk_size = chunk_size
        self.partitions = partitions
        self.on_done = on_done
        self.encrypt = encrypt  # KafkaCrypto: (topic, key, value) → encrypted (key, value), in the reader threads
        self.bytes_produced = 0  # file bytes handed to librdkafka ("sent")
        self.bytes_acked = 0  # ... and acknowledged by the broker
        self.files_sent = 0  # files whose every chunk was sent (acknowledged ones: on_done without error)
        self.acked = Counters()
        self.pending: set[FileJob] = set()
        self._jobs: queue.Queue[FileJob | None] = queue.Queue()
        self._chunks: queue.Queue[tuple] = queue.Queue(max(4, queue_bytes // max(chunk_size, 1)))
        self._abort = threading.Event()
        self._readers = [threading.Thread(target=self._read_loop, name=f"omsd-upload-reader-{i}", daemon=True)
                         for i in range(max(1, readers))]
        for thread in self._readers:
            thread.start()

    # -- producing thread -------------------------------------------------

    def submit(self, entry: FileEntry, skip_if_sha512: bytes | None = None) -> FileJob:
        """Queue one file for upload."""
        job = FileJob(entry, skip_if_sha512=skip_if_sha512, on_done=self._job_done, on_acked=self.acked.add_produced)
        self.pending.add(job)
        self._jobs.put(job)
        return job

    def _job_done(self, job: FileJob) -> None:
        self.pending.discard(job)
        if self.on_done is not None:
            self.on_done(job)

    @property
    def idle(self) -> bool:
        return not self.pending

    def pump(self, max_secs: float = 0.1) -> None:
        """Produce queued chunks for up to ``max_secs`` and serve delivery reports."""
        deadline = time.monotonic() + max_secs
        while True:
            try:
                item = self._chunks.get(timeout=0.01)
            except queue.Empty:
                item = None
            if item is not None:
                self._handle(item)
            self.producer.poll(0)
            if time.monotonic() >= deadline:
                return

    def _handle(self, item: tuple) -> None:
        job: FileJob = item[0]
        if len(item) == 1:  # end of the file's chunks (or error, or skipped)
            job.read_done = True
            if job.error is None and not job.skipped:
                self.files_sent += 1  # every chunk handed to librdkafka; acknowledged later
            job.check_finished()
            return
        _, key, value, partition, nbytes = item
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, partition=partition,
                                      on_delivery=functools.partial(self._delivered, job, nbytes))
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                self.producer.poll(0.05)
            except KafkaException as exc:
                job.error = job.error or f"cannot produce: {exc.args[0].str() if exc.args else exc}"
                return
        job.n_produced += 1
        self.bytes_produced += nbytes

    def _delivered(self, job: FileJob, nbytes: int, err: KafkaError | None, msg: object) -> None:
        if err is None:
            self.bytes_acked += nbytes
        job.delivered(err, msg)

    def finish(self, timeout: float | None = None) -> int:
        """Stop the readers (after queued files) and wait for deliveries; return undelivered count."""
        for _ in self._readers:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(t.is_alive() for t in self._readers) or not self._chunks.empty():
            if deadline is not None and time.monotonic() > deadline:
                self.abort()
                break
            self.pump(0.1)
        while True:
            left = self.producer.flush(0.5)
            if left == 0 or (deadline is not None and time.monotonic() > deadline):
                return left

    def abort(self) -> None:
        """Stop reading now; files not yet fully read stay unfinished."""
        self._abort.set()
        for _ in self._readers:
            self._jobs.put(None)
        while True:  # unblock readers waiting on a full queue
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                break

    # -- reader threads ---------------------------------------------------

    def _put(self, item: tuple) -> bool:
        while not self._abort.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read_loop(self) -> None:
        while not self._abort.is_set():
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._read_file(job)
            except OSError as exc:
                job.error = f"cannot read {job.entry.path}: {exc.strerror or exc}"
            except UnsafePathError as exc:
                job.error = f"cannot send {display_path(job.entry.relative_path)}: {exc}"
            except Exception as exc:  # never let a reader thread die silently
                log.exception("reading a file failed", path=str(job.entry.path))
                job.error = f"cannot read {job.entry.path}: {exc}"
            if not self._abort.is_set():
                self._put((job,))

    def _read_file(self, job: FileJob) -> None:
        entry, size_cs = job.entry, self.chunk_size
        reason = entry.cannot_travel()
        if reason is not None:
            raise UnsafePathError(reason)
        with open(entry.path, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())
            job.stat_size, job.mtime_ns = st.st_size, st.st_mtime_ns
            keep = st.st_size <= IN_MEMORY_FILE_BYTES
            whole = hashlib.sha512()
            kept: list[bytes] = []
            chunk_hashes: list[bytes] = []
            lengths: list[int] = []
            while not self._abort.is_set():
                data = _read_exactly(fh, size_cs)
                if not data:
                    break
                whole.update(data)
                chunk_hashes.append(hashlib.sha512(data).digest())
                lengths.append(len(data))
                if keep:
                    kept.append(data)
            if self._abort.is_set():
                return
            if not lengths:  # an empty file travels as one empty chunk
                kept, chunk_hashes, lengths, keep = [b""], [EMPTY_SHA512], [0], True
            job.sha512 = whole.digest()
            job.size = sum(lengths)
            job.n_total = len(lengths)
            if job.skip_if_sha512 is not None and job.skip_if_sha512 == job.sha512:
                job.skipped = True
                return
            partition = -1 if self.partitions is None else shard_for(entry.relative_path, self.partitions)
            if not keep:
                fh.seek(0)
            offset = 0
            for i, length in enumerate(lengths):
                data = kept[i] if keep else _read_exactly(fh, length)
                if len(data) != length:
                    raise OSError(0, f"{entry.path} changed while it was being read")
                if keep:
                    kept[i] = b""  # let the memory go as soon as the message holds it
                value = encode_chunk(filename=entry.filename, file_hash=job.sha512, data=data, offset=offset,
                                     chunk_i=i + 1, n_total_chunks=job.n_total, subdir_str=entry.subdir_str,
                                     file_mtime=st.st_mtime, chunk_hash=chunk_hashes[i])
                key = chunk_key(entry.subdir_str, entry.filename, i + 1, job.n_total)
                if self.encrypt is not None:
                    key, value = self.encrypt(self.topic, key, value)
                if not self._put((job, key, value, partition, length)):
                    return
                offset += length
            if not keep:
                after = os.fstat(fh.fileno())
                if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                    raise OSError(0, f"{entry.path} changed while it was being read")


def _read_exactly(fh, n: int) -> bytes:
    """Read ``n`` bytes, or fewer only at the end of the file."""
    data = fh.read(n)
    if data is None or len(data) == n or not data:
        return data or b""
    parts = [data]
    got = len(data)
    while got < n:
        more = fh.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# -- broker set-up ----------------------------------------------------------


class _ErrorRecorder:
    """Keeps the last librdkafka error so a failure can be explained in one line."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, err: KafkaError) -> None:
        self.last = err.str()


def open_producer(config: Config, topic: str, *, file_affine: bool,
                  connect_timeout: float) -> tuple[Producer, int | None, _ErrorRecorder]:
    """A connected producer and the topic's partition count (None with the default partitioner).

    A broker that does not answer is waited for up to ``connect_timeout``; one that refuses the
    connection outright (nothing listens on its port) fails after a few quick retries.
    """
    errors = _ErrorRecorder()
    overrides: dict[str, object] = {}
    if "queue.buffering.max.kbytes" not in config.producer:
        overrides["queue.buffering.max.kbytes"] = 128 * 1024  # plenty in flight; keeps memory modest
    producer = make_producer(config, polled=True, on_error=errors, **overrides)
    bootstrap = producer_config(config).get("bootstrap.servers", "?")
    servers = [s.strip() for s in str(bootstrap).split(",") if s.strip()]
    start = time.monotonic()
    deadline = start + connect_timeout
    while True:
        try:
            metadata = producer.list_topics(topic, timeout=max(0.1, min(ASK_EVERY_S, deadline - time.monotonic())))
        except KafkaException as exc:
            producer.poll(0)  # serve error_cb and the logs: they name the cause (connection refused, ...)
            now = time.monotonic()
            reason = errors.last or (exc.args[0].str() if exc.args else str(exc))
            if KAFKA_LOG.refused(servers, QUICK_REFUSALS) and now - start >= REFUSED_AFTER_S:
                raise UploadError(f"the broker at {bootstrap} refused the connection ({QUICK_REFUSALS} or more "
                                  f"tries in {now - start:.1f}s; is it running, on that port?): {reason}") from None
            if now < deadline:
                continue
            raise UploadError(f"cannot reach the broker at {bootstrap} within {connect_timeout:g}s: {reason}") from None
        info = metadata.topics.get(topic)
        if info is not None and info.error is None and info.partitions:
            return producer, (len(info.partitions) if file_affine else None), errors
        # A topic being auto-created has no leader for a moment; ask again until the deadline.
        if time.monotonic() + 0.2 >= deadline:
            why = info.error.str() if info is not None and info.error is not None else "no partitions"
            raise UploadError(f"topic '{topic}' is not available on {bootstrap}: {why}")
        time.sleep(0.2)


# -- command line -----------------------------------------------------------
