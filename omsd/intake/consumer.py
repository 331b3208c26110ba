"""Intake: one consumer group — reads chunk messages, assembles files, commits safe offsets.

Offsets are committed only up to the watermark (see :mod:`omsd.intake.watermark`),
never automatically; when a partition is given up, what was finished above
its committed offset is handed to its next owner (see :mod:`omsd.intake.handover`).
Under backpressure the consumer pauses its partitions and keeps polling, so
it stays in its group during a slow analysis.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import structlog
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import OFFSET_INVALID, Message, TopicPartition

from omsd.intake.assembly import Assembler, FileAssembly, FileKey
from omsd.config import Config, PipelineConfig
from omsd.intake.flow import FlowControl, PauseReason
from omsd.crypto.node import CryptoNode
from omsd.intake.decrypt import Decryptor, Opened
from omsd.intake.handover import HandoverLog, changed_progress
from omsd.kafka import KAFKA_LOG, consumer_config, make_consumer
from omsd.wire.protocol import Chunk, ProtocolError, decode_chunk, verify_chunk_hash
from omsd.registry import Registry
from omsd.intake.staging import Staging, StagingFull
from omsd.intake.startoffsets import reset_offset, start_offsets
from omsd.intake.undecryptable import UndecryptableStore
from omsd.intake.fetch import batch_size, fetch
from omsd.intake.rejections import Rejections
from omsd.intake.watermark import TopicPartitionKey, Watermarks

log = structlog.get_logger(__name__)

FINISHED_CACHE_SIZE = 10000
HASH_THREADS = 2
HANDOVER_EVERY_S = 5.0  # progress records while running (when they changed), so a crash repeats little


class Intake:
    """One consumer group's consumer, assembler and watermarks."""

    def __init__(self, config: Config, group_id: str, pipelines: list[PipelineConfig], staging: Staging,
                 registry: Registry, on_read: Callable[[int], None],
                 on_reject: Callable[[str], None] | None = None, on_error: Callable[[object], None] | None = None,
                 before_revoke: Callable[["Intake", set[TopicPartitionKey]], None] | None = None,
                 handover: HandoverLog | None = None, crypto: CryptoNode | None = None) -> None:
        self.group_id = group_id
        self.pipelines = pipelines
        self.topics = sorted({p.topic for p in pipelines})
        self.registry = registry
        self.on_read = on_read
        self.before_revoke = before_revoke
        self.handover = handover
        self.handed_over_skipped = 0  # messages the previous owner of their partition had finished
        self.consumer = make_consumer(config, group_id, polled=True, on_error=on_error)
        self._reset = reset_offset(consumer_config(config, group_id))  # None: librdkafka places new partitions
        self.watermarks = Watermarks()
        self.assembler = Assembler(staging, self.watermarks, config.staging.max_file_bytes)
        # Encrypted topics: messages are decrypted before decoding (see omsd.intake.decrypt).
        self.decryptor = (Decryptor(crypto, config.kafkacrypto, UndecryptableStore(config.state_dir, group_id),
                                    self.watermarks) if crypto is not None and config.kafkacrypto else None)
        self.assigned: set[TopicPartitionKey] = set()
        self.flow = FlowControl(self._set_paused)
        self.unassigned_since: float | None = None  # when the last partition went (rebalance, outage)
        self.rejections = Rejections(group_id, on_reject)
        self.messages_read = 0
        self._message_bytes = 64 << 10  # running average of message sizes, for the batch size
        self._finished: OrderedDict[FileKey, bool] = OrderedDict()
        self.processing: set[FileKey] = set()  # complete files the workers have not finished
        self.verify_at_intake = config.staging.verify_chunk_hashes == "at_intake"
        self._hashers = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="omsd-hash")
        self._last_commit = 0.0
        self._last_handover = time.monotonic()
        self._published: dict[TopicPartitionKey, tuple[int, list[int]]] = {}

    # -- group membership --------------------------------------------------------------------------
    def subscribe(self) -> None:
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _on_assign(self, consumer: object, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self.assigned |= tps
        if self.assigned:
            self.unassigned_since = None
        KAFKA_LOG.connected()  # the group coordinator answered: the broker is back, whatever came before
        log.info("partitions assigned", group=self.group_id, partitions=sorted(tps))
        starts = start_offsets(self.consumer, partitions, self._reset) if self._reset is not None else None
        if starts is not None:
            self.consumer.assign(starts)  # read at once, not after librdkafka's own lookup (startoffsets)
        if self.handover is not None and self.handover.ready():
            if starts is None or any(part.offset >= 0 for part in starts):  # records apply to committed offsets
                self._inherit(partitions, starts)
        # librdkafka keeps a partition's pause flag across revoke and re-assignment: set it explicitly.
        if self.flow.paused:
            self.consumer.pause(partitions)
        else:
            self.consumer.resume(partitions)

    def _inherit(self, partitions: list[TopicPartition], committed: list[TopicPartition] | None) -> None:
        """Take over what the previous owners of these partitions finished above their committed offsets.

        ``committed``: the partitions' committed offsets if already read (negative: none).
        """
        try:
            self.handover.catch_up()
            if committed is None:
                committed = self.consumer.committed(partitions, timeout=10)
        except Exception as exc:  # noqa: BLE001 - without it, finished files are merely repeated
            log.warning("could not read handover records", group=self.group_id, error=str(exc))
            return
        for part in committed:
            tp = (part.topic, part.partition)
            done = self.handover.lookup(self.group_id, tp, part.offset) if part.offset >= 0 else None
            if done:
                self.watermarks.inherit(tp, part.offset, done)
                log.info("handover applied", group=self.group_id, topic=tp[0], partition=tp[1],
                         committed=part.offset, finished_messages=done.count())

    def _on_revoke(self, consumer: object, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        if self.before_revoke is not None:
            self.before_revoke(self, tps)  # lets files from these partitions finish first
        self.commit(force=True, only=tps)
        self._drop(tps, "revoked")

    def _on_lost(self, consumer: object, partitions: list[TopicPartition]) -> None:
        self._drop({(p.topic, p.partition) for p in partitions}, "lost")

    def _drop(self, tps: set[TopicPartitionKey], why: str) -> None:
        dropped = self.assembler.drop_partitions(tps)
        if self.decryptor is not None:
            self.decryptor.drop_partitions(tps)
        self.watermarks.forget(tps)
        self.assigned -= tps
        if not self.assigned and self.unassigned_since is None:
            self.unassigned_since = time.monotonic()
        log.info(f"partitions {why}", group=self.group_id, partitions=sorted(tps), partial_files_dropped=len(dropped))

    # -- reading -----------------------------------------------------------------------------------
    def poll(self, timeout: float) -> list[FileAssembly]:
        """Read a batch of messages; return the files they completed.

        Each batch is decoded; with ``verify_chunk_hashes: at_intake`` the chunk
        hashes of the chunks we will keep are checked in parallel threads
        (sha512 releases the GIL); then the chunks are staged in order.
        """
        self.flow.retry_staging(time.monotonic())
        messages = fetch(self.consumer, batch_size(self._message_bytes), timeout)
        opened: list[Opened] = []
        if self.decryptor is not None:
            messages = self.decryptor.admit(messages)  # those still waiting for their key are held back
            opened = self.decryptor.ready()
        items = [item for item in map(self._decode, messages) if item is not None]
        self._look_up(items)
        if self.verify_at_intake:
            self._verify_hashes(items)
        completed: list[FileAssembly] = []
        rewound: set[TopicPartitionKey] = set()
        for msg, tp, decoded in items:
            if tp in rewound:
                continue
            if self.watermarks.handed_over(tp, msg.offset()):
                self.handed_over_skipped += 1
                self.watermarks.consumed(tp, msg.offset())
                continue
            try:
                done = (self._stage(msg, tp, decoded) if isinstance(decoded, Chunk)
                        else self._refuse(decoded, tp, msg.offset()))
            except StagingFull as exc:
                # Nothing is lost: re-read from this message once space returns.
                log.error("staging is full; pausing intake", group=self.group_id, error=str(exc))
                self.consumer.seek(TopicPartition(tp[0], tp[1], msg.offset()))
                rewound.add(tp)
                self.flow.staging_full(time.monotonic())
                continue
            self.watermarks.consumed(tp, msg.offset())
            if done is not None:
                self.processing.add(done.key)
                completed.append(done)
        for item in opened:
            self._stage_opened(item, completed)
        return completed

    def _stage_opened(self, opened: Opened, completed: list[FileAssembly]) -> None:
        """A message decrypted after waiting for its key, or read again from its kept file."""
        item = self._decode(opened.msg)
        if item is None:
            return
        msg, tp, decoded = item
        done = None
        if isinstance(decoded, Chunk):
            try:
                done = self._stage(msg, tp, decoded, late=True)
            except StagingFull:
                self.decryptor.requeue(opened)
                self.flow.staging_full(time.monotonic())
                return
        else:
            self.reject(decoded, tp, msg.offset())
            self.watermarks.finished(tp, msg.offset())
        if done is not None:
            self.processing.add(done.key)
            completed.append(done)
        if opened.kept is not None:
            key = (tp[0], decoded.relative_path, decoded.file_hash) if isinstance(decoded, Chunk) else None
            if key is not None and (key in self.assembler.files or key in self.processing):
                self.decryptor.bind(key, opened.kept)  # deleted once that file is finished
            else:
                self.decryptor.dispose(opened.kept)

    def _decode(self, msg: Message) -> tuple[Message, TopicPartitionKey, Chunk | ProtocolError] | None:
        err = msg.error()
        if err is not None:
            KAFKA_LOG.consumer_error(self.group_id, err)  # a topic not created yet is said so, once
            return None
        value = msg.value()
        size = len(value) if value else 0
        self.messages_read += 1
        self._message_bytes = max(1, (7 * self._message_bytes + size) // 8)
        self.on_read(size)
        tp = (msg.topic(), msg.partition())
        try:
            decoded = decode_chunk(value, max_file_size=self.assembler.max_file_size, verify_hash=False)
        except ProtocolError as exc:
            return msg, tp, exc
        return msg, tp, decoded

    def _look_up(self, items: list) -> None:
        """Ask the registry about the batch's new files in one query (see :meth:`Registry.look_up`)."""
        new: dict[str, list[tuple[str, str]]] = {}
        for _msg, tp, decoded in items:
            if isinstance(decoded, Chunk):
                key = (tp[0], decoded.relative_path, decoded.file_hash)
                if key not in self.assembler.files and key not in self.processing and key not in self._finished:
                    new.setdefault(tp[0], []).append((key[1], key[2].hex()))
        for topic, files in new.items():
            self.registry.look_up(topic, files)

    def _verify_hashes(self, items: list) -> None:
        """Replace chunks whose data does not match their hash by the error (only chunks we would stage)."""
        todo = [i for i, (_msg, tp, decoded) in enumerate(items)
                if isinstance(decoded, Chunk) and self._wanted(tp, decoded)]
        if not todo:
            return

        def check(index: int) -> ProtocolError | None:
            try:
                verify_chunk_hash(items[index][2])
            except ProtocolError as exc:
                return exc
            return None

        results = self._hashers.map(check, todo) if len(todo) > 1 else map(check, todo)
        for index, error in zip(todo, list(results)):
            if error is not None:
                msg, tp, _decoded = items[index]
                items[index] = (msg, tp, error)

    def _wanted(self, tp: TopicPartitionKey, chunk: Chunk) -> bool:
        """Would this chunk be staged (as far as we can tell before the batch is handled)?"""
        key = (tp[0], chunk.relative_path, chunk.file_hash)
        if key in self.processing:
            return False
        assembly = self.assembler.files.get(key)
        if assembly is not None:
            return chunk.chunk_i not in assembly.received
        pipelines = self.pipelines_for(tp[0], chunk.relative_path)
        return bool(pipelines) and not self._already_finished(key, pipelines)

    def _stage(self, msg: Message, tp: TopicPartitionKey, chunk: Chunk, late: bool = False) -> FileAssembly | None:
        relative_path = chunk.relative_path
        pipelines = self.pipelines_for(tp[0], relative_path)
        if not pipelines:
            self.watermarks.finished(tp, msg.offset())
            return None  # no pipeline wants this file: committed past, never staged
        key = (tp[0], relative_path, chunk.file_hash)
        if key in self.processing:
            return None  # a late duplicate of a file the workers already have
        assembly = self.assembler.files.get(key)
        if not late and self.watermarks.seen(tp, msg.offset()) and (assembly is None or not assembly.suspect):
            return None  # read again only for a reopened file; everything else was handled the first time
        if assembly is None and self._already_finished(key, pipelines):
            self.watermarks.finished(tp, msg.offset())
            return None
        if assembly is not None and assembly.suspect and chunk.chunk_i not in assembly.received:
            if (tp, msg.offset()) in assembly.bad_messages:
                return None  # already counted when its file failed
            verify_chunk_hash(chunk)  # a ProtocolError here is rejected below
        try:
            return self.assembler.add(tp[0], tp[1], msg.offset(), chunk)
        except ProtocolError as exc:
            self._refuse(exc, tp, msg.offset())
            return None

    def _refuse(self, exc: ProtocolError, tp: TopicPartitionKey, offset: int) -> None:
        """Reject a message on first reading; when a partition is read again, it was counted already."""
        if not self.watermarks.seen(tp, offset):
            self.reject(exc, tp, offset)
            self.watermarks.finished(tp, offset)

    def reject(self, exc: ProtocolError, tp: TopicPartitionKey, offset: int) -> None:
        """A message we cannot use: logged with where it is, counted, skipped (see :class:`Rejections`)."""
        self.rejections.add(exc, tp, offset)

    def pipelines_for(self, topic: str, relative_path: str) -> list[PipelineConfig]:
        return [p for p in self.pipelines if p.topic == topic and p.matches(relative_path)]

    def _already_finished(self, key: FileKey, pipelines: list[PipelineConfig]) -> bool:
        cached = self._finished.get(key)
        if cached:
            return True
        finished = self.registry.is_finished(key[0], key[1], key[2].hex(), [p.name for p in pipelines])
        if finished:
            self._finished[key] = True
            if len(self._finished) > FINISHED_CACHE_SIZE:
                self._finished.popitem(last=False)
        return finished

    def reopen(self, assembly: FileAssembly, bad_chunks: list[int]) -> None:
        """The file's whole-file hash failed because of ``bad_chunks``: read its partitions again from
        its first chunk, so good copies of those chunks (if the topic has any) can complete it."""
        self.processing.discard(assembly.key)
        self.assembler.reopen(assembly, bad_chunks)
        for (topic, partition), offset in self.watermarks.held(assembly.id).items():
            if (topic, partition) in self.assigned:
                try:
                    self.consumer.seek(TopicPartition(topic, partition, offset))
                except Exception as exc:  # noqa: BLE001 - the file then expires like any incomplete one
                    log.warning("could not re-read a partition", topic=topic, partition=partition, error=str(exc))
        log.warning("file reopened to replace corrupt chunks", group=self.group_id, path=assembly.relative_path,
                    chunks=bad_chunks)

    def finish(self, assembly: FileAssembly, *, recorded: bool = True) -> None:
        """A completed file leaves the daemon: its staging is freed and its offsets released.

        ``recorded``: its outcome is in the registry, so later copies of its chunks are skipped;
        otherwise (a corrupt file) the same file sent again is processed.
        """
        self.assembler.discard(assembly)
        self.processing.discard(assembly.key)
        if recorded:
            self._finished[assembly.key] = True
        if self.decryptor is not None:
            self.decryptor.file_finished(assembly.key)

    # -- flow control and commits ------------------------------------------------------------------
    def _set_paused(self, paused: bool, reason: PauseReason) -> None:
        """Applies :attr:`flow`: fetching stops (polling goes on, so the group membership stays) or resumes."""
        partitions = [TopicPartition(t, p) for t, p in self.assigned]
        if paused:
            self.consumer.pause(partitions)
            log.info("intake paused", group=self.group_id, reason=reason.value)
        else:
            self.consumer.resume(partitions)
            log.info("intake resumed", group=self.group_id)

    def commit(self, force: bool = False, only: set[TopicPartitionKey] | None = None, every_s: float = 1.0) -> None:
        """Commit the safe offsets that moved (at most every ``every_s`` unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_commit < every_s:
            return
        self._last_commit = now
        tps = only if only is not None else self.assigned
        try:
            self.registry.sync()  # the outcomes behind these offsets must be durable before they are committed
        except OSError as exc:  # e.g. ENOSPC from fsync: commit nothing now, try again on the next tick
            log.warning("registry sync failed; offsets not committed", group=self.group_id, error=str(exc))
            return
        if force:
            self._hand_over(tps, wait=True)
        elif now - self._last_handover >= HANDOVER_EVERY_S:
            self._hand_over(tps, wait=False)
        offsets = self.watermarks.to_commit(tps)
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=False)
        except Exception as exc:  # noqa: BLE001 - a failed commit is retried on the next tick
            log.warning("offset commit failed", group=self.group_id, error=str(exc))
            return
        self.watermarks.committed(offsets)

    def _hand_over(self, tps: set[TopicPartitionKey], wait: bool) -> None:
        """Publish what is finished above the offsets about to be committed: before a final commit
        (``wait``: delivered first), and now and then while running (only what changed)."""
        self._last_handover = time.monotonic()
        if self.handover is None or not self.handover.available:
            return
        progress = changed_progress(self.watermarks, tps, self._published, every=wait)
        if progress:
            self.handover.publish(self.group_id, progress, wait=wait)
            (log.info if wait else log.debug)("handover published", group=self.group_id,
                     partitions={f"{t}[{p}]": {"committed": c, "finished_messages": d.count()}
                                 for (t, p), (c, d) in sorted(progress.items())})

    def lag(self, timeout: float = 0.2, cached: bool = False) -> dict[TopicPartitionKey, int]:
        """Messages between the committed (safe) offset and the end of each assigned partition.
        ``cached``: from the ends the last fetches reported, without asking the broker (never blocks)."""
        out = {}
        for topic, partition in sorted(self.assigned):
            try:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout,
                                                                cached=cached)
            except Exception:  # noqa: BLE001 - the broker may be away; lag is best effort
                continue
            if high < 0:
                continue
            committed = self.watermarks.committed_offset((topic, partition))
            out[(topic, partition)] = max(0, high - (committed if committed is not None else max(low, 0)))
        return out

    def _positions(self) -> dict[tuple[str, int], int]:
        """The next offset the consumer fetches, per assigned partition (known locally; no broker request)."""
        try:
            found = self.consumer.position([TopicPartition(t, p) for t, p in sorted(self.assigned)])
        except Exception:  # noqa: BLE001 - shown as "-" when librdkafka cannot say
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def close(self) -> None:
        self.commit(force=True)
        self.consumer.close()
        self._hashers.shutdown(wait=False)

    def describe_partitions(self) -> list[dict]:
        """One row per partition for `omsctl status`: committed, safe (watermark), position, lag."""
        out = []
        positions = self._positions()
        lags = self.lag(cached=True)
        for topic, partition in sorted(self.assigned | self.watermarks.partitions()):
            tp = (topic, partition)
            committed = self.watermarks.committed_offset(tp)
            out.append({"group": self.group_id, "topic": topic, "partition": partition,
                        "committed": committed if committed not in (None, OFFSET_INVALID) else None,
                        "watermark": self.watermarks.safe(tp), "position": positions.get(tp), "lag": lags.get(tp),
                        "assigned": tp in self.assigned,
                        "paused": self.flow.paused, "pause_reasons": sorted(r.value for r in self.flow.reasons)})
        return out
