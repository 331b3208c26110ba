"""Decryption at intake: encrypted messages in, plain messages out, and nothing lost while keys are missing.

A message whose key has arrived is decrypted in place (its key and value replaced) and goes on to
staging like any other. One whose key has not arrived yet is held back, without blocking the loop:

- it holds its partition's safe offset (a watermark hold), and is tried again every
  ``RETRY_EVERY_S`` until its deadline: ``max_initial_wait_per_decrypt`` after the first message under
  the same encryption key (key index) was read, and at least ``max_wait_per_decrypt`` after itself;
- then it is kept raw and durably (:mod:`omsd.intake.undecryptable`), and only then is its offset
  released, so the partition's commit moves past it;
- kept messages are tried again every ``retry_undecryptable_secs`` (one probe per key index: when it
  opens, all messages under that key are re-read from their files, ``REPLAY_BYTES`` at a time) and on
  ``omsctl retry --undecryptable``; a kept file is deleted only once the file it belongs to is finished.

Messages that are not KafkaCrypto messages at all are kept at once, or passed on as they are with
``treat_undecryptable_as_plaintext``.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import Message

from omsd.crypto.node import NOT_YET, CryptoNode, NotDecryptable, key_index
from omsd.crypto.settings import CryptoSettings
from omsd.intake.undecryptable import KeptMessage, UndecryptableStore
from omsd.intake.watermark import TopicPartitionKey, Watermarks

log = structlog.get_logger(__name__)

RETRY_EVERY_S = 0.25
REPLAY_BYTES = 256 << 20  # kept messages read back into memory at a time
WAITING_BYTES = 256 << 20  # messages held in memory for their key; past this the oldest are kept on disk early
_holders = itertools.count(1)


@dataclass(eq=False)
class _Pending:
    """A message waiting for its key: read from the topic (``holder`` set) or from a kept file."""

    msg: Message
    key_index: bytes | None
    deadline: float
    next_try: float
    holder: int | None = None  # its watermark hold (negative ids: never an assembly's)
    kept: KeptMessage | None = None
    plain: bool = False  # already decrypted; waits only for room in staging


@dataclass
class Opened:
    """A message that was decrypted (``kept``: it came from a kept file, which the caller disposes of)."""

    msg: Message
    kept: KeptMessage | None = None


@dataclass
class DecryptStats:
    decrypted: int = 0
    kept: int = 0
    plaintext: int = 0
    recovered: int = 0  # kept messages decrypted later
    waiting_since: dict[TopicPartitionKey, float] = field(default_factory=dict)


class Decryptor:
    """The decrypting stage of one consumer group (owned by its :class:`~omsd.intake.consumer.Intake`)."""

    def __init__(self, node: CryptoNode, settings: CryptoSettings, store: UndecryptableStore,
                 watermarks: Watermarks) -> None:
        self.node = node
        self.settings = settings
        self.store = store
        self.watermarks = watermarks
        self.stats = DecryptStats()
        self._live: dict[tuple[TopicPartitionKey, int], _Pending] = {}
        self._live_per_tp: Counter[TopicPartitionKey] = Counter()  # how many of _live each partition has
        self._replays: dict[Path, _Pending] = {}
        self._replay_queue: list[tuple[Path, float]] = []  # kept files still to be read again, with their wait
        self._replay_bytes = 0
        self._live_bytes = 0
        self._first_seen: dict[tuple[str, bytes | None], float] = {}
        self._bound: dict[object, list[Path]] = {}  # file key → kept files it was staged from
        self._next_probe = time.monotonic() + min(settings.retry_undecryptable_s, 5.0)

    # -- messages read from the topic --------------------------------------------------------------
    def admit(self, messages: list[Message]) -> list[Message]:
        """Decrypt what can be; hold back what waits for a key; keep what never will open."""
        now = time.monotonic()
        out = []
        for msg in messages:
            if msg.error() is not None:
                out.append(msg)
                continue
            tp, offset = (msg.topic(), msg.partition()), msg.offset()
            if (tp, offset) in self._live:
                continue  # read again (a seek) while it waits: the waiting copy stands
            try:
                opened = self.node.decrypt(tp[0], msg.key(), msg.value())
            except NotDecryptable as exc:
                if self.settings.treat_undecryptable_as_plaintext:
                    self.stats.plaintext += 1
                    out.append(msg)
                else:
                    self._keep_now(msg, str(exc))
                continue
            if opened is NOT_YET:
                self._hold(msg, now)
                continue
            self._set(msg, opened)
            self.stats.decrypted += 1
            out.append(msg)
        return out

    def _hold(self, msg: Message, now: float, deadline: float | None = None) -> None:
        tp, offset = (msg.topic(), msg.partition()), msg.offset()
        index = key_index(msg.key()) or key_index(msg.value())
        first = self._first_seen.setdefault((tp[0], index), now)
        if deadline is None:
            deadline = max(first + self.settings.max_initial_wait_s, now + self.settings.max_wait_s)
        pending = _Pending(msg=msg, key_index=index, next_try=now + RETRY_EVERY_S, holder=-next(_holders),
                           deadline=deadline)
        self.watermarks.hold(tp, pending.holder, offset)
        self.watermarks.consumed(tp, offset)
        self._add_live(tp, offset, pending)
        self.stats.waiting_since.setdefault(tp, now)

    def _keep_now(self, msg: Message, reason: str) -> None:
        tp, offset = (msg.topic(), msg.partition()), msg.offset()
        if not self._keep(msg, None, reason):
            self._hold(msg, time.monotonic(), deadline=0.0)  # written as soon as the disk takes it
            return
        self.watermarks.consumed(tp, offset)
        self.watermarks.finished(tp, offset)

    def _keep(self, msg: Message, index: bytes | None, reason: str) -> bool:
        """Write the raw message to disk; False (logged) when the disk refuses: it then stays held."""
        timestamp = msg.timestamp()[1] if msg.timestamp() and msg.timestamp()[0] else None
        try:
            path = self.store.keep(msg.topic(), msg.partition(), msg.offset(), timestamp, msg.key(),
                                   msg.value() or b"", index, reason)
        except OSError as exc:
            log.error("cannot keep an undecryptable message; its offset stays held and writing is retried",
                      topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), error=str(exc))
            return False
        self.stats.kept += 1
        log.warning("undecryptable message kept", topic=msg.topic(), partition=msg.partition(),
                    offset=msg.offset(), reason=reason, file=str(path))
        return True

    @staticmethod
    def _set(msg: Message, opened: tuple[bytes | None, bytes]) -> None:
        key, value = opened
        msg.set_key(key)
        msg.set_value(value)

    # -- waiting messages --------------------------------------------------------------------------
    def ready(self, now: float | None = None) -> list[Opened]:
        """Waiting messages that opened now, in offset order; those past their deadline are kept."""
        now = time.monotonic() if now is None else now
        if now >= self._next_probe:
            self._next_probe = now + self.settings.retry_undecryptable_s
            self._probe_kept(now)
        self._top_up(now)
        out: list[Opened] = []
        closed: set[tuple[str, bytes | None]] = set()  # key indexes that did not open this turn
        for pending in sorted((*self._live.values(), *self._replays.values()),
                              key=lambda p: (p.msg.topic(), p.msg.partition(), p.msg.offset())):
            if pending.next_try > now:
                continue
            group = (pending.msg.topic(), pending.key_index)
            opened = NOT_YET
            if pending.plain:
                opened = (pending.msg.key(), pending.msg.value())
            elif group not in closed:
                try:
                    opened = self.node.decrypt(pending.msg.topic(), pending.msg.key(), pending.msg.value())
                except NotDecryptable:
                    opened = NOT_YET
            if opened is NOT_YET:
                closed.add(group)
                pending.next_try = now + RETRY_EVERY_S
                if now >= pending.deadline:
                    self._give_up(pending)
                continue
            self._set(pending.msg, opened)
            self._drop(pending)
            if pending.kept is not None:
                self.stats.recovered += 1
            else:
                self.stats.decrypted += 1
            out.append(Opened(pending.msg, pending.kept))
        self._bound_memory()
        return out

    def _bound_memory(self) -> None:
        """Too much waits in memory: keep the oldest on disk now (they are tried again from there)."""
        if self._live_bytes <= WAITING_BYTES:
            return
        for pending in sorted(self._live.values(), key=lambda p: p.deadline):
            if self._live_bytes <= WAITING_BYTES // 2:
                return
            if not pending.plain:
                self._give_up(pending, f"more than {WAITING_BYTES >> 20} MiB waited for keys")

    def _give_up(self, pending: _Pending, reason: str = "no decryption key arrived in time") -> None:
        """Past its deadline: keep it on disk (a kept one stays where it is), then release its offset."""
        if pending.kept is None and not self._keep(pending.msg, pending.key_index, reason):
            pending.next_try = time.monotonic() + 1.0  # the disk refused: still held, written later
            return
        if pending.holder is not None:
            self.watermarks.release(pending.holder, done=True)  # durable on disk: the commit may pass it
            pending.holder = None
        self._drop(pending)

    def _drop(self, pending: _Pending) -> None:
        if pending.kept is not None:
            if self._replays.pop(pending.kept.path, None) is not None:
                self._replay_bytes -= len(pending.kept.value)
            return
        tp = (pending.msg.topic(), pending.msg.partition())
        if self._live.pop((tp, pending.msg.offset()), None) is not None:
            self._live_bytes -= len(pending.msg.value() or b"")
            self._live_per_tp[tp] -= 1
        if pending.holder is not None:
            self.watermarks.release(pending.holder, done=False)  # staging takes the offset over
            pending.holder = None
        if self._live_per_tp[tp] <= 0:  # counted, not searched: a key that opens a backlog drops thousands at once
            del self._live_per_tp[tp]
            self.stats.waiting_since.pop(tp, None)

    def _add_live(self, tp: TopicPartitionKey, offset: int, pending: _Pending) -> None:
        if (tp, offset) not in self._live:
            self._live_per_tp[tp] += 1
        self._live[(tp, offset)] = pending
        self._live_bytes += len(pending.msg.value() or b"")

    def requeue(self, opened: Opened) -> None:
        """A decrypted message could not be staged yet (staging full): wait again, already open."""
        msg = opened.msg
        if opened.kept is not None:
            return  # its file stays; the next retry reads it again
        tp = (msg.topic(), msg.partition())
        pending = _Pending(msg=msg, key_index=None, deadline=float("inf"), next_try=time.monotonic() + RETRY_EVERY_S,
                           holder=-next(_holders), plain=True)
        self.watermarks.hold(tp, pending.holder, msg.offset())
        self._add_live(tp, msg.offset(), pending)

    def drop_partitions(self, tps: set[TopicPartitionKey]) -> None:
        """Revoked partitions: forget their waiting messages (the next owner reads them again)."""
        for (tp, offset), pending in list(self._live.items()):
            if tp in tps:
                pending.holder = None  # the watermarks of these partitions are forgotten as a whole
                self._drop(pending)

    # -- kept messages ------------------------------------------------------------------------------
    def retry_kept(self, wait_s: float | None = None) -> int:
        """Try every kept message again (``omsctl retry --undecryptable``); returns how many.

        They are read from disk ``REPLAY_BYTES`` at a time, as earlier ones leave (each waits for its key
        from when it is read), so a large backlog does not fill the memory.
        """
        wait = self.settings.max_initial_wait_s if wait_s is None else wait_s
        queued = {path for path, _ in self._replay_queue}
        fresh = [e.path for e in self.store.entries() if e.path not in self._replays and e.path not in queued]
        self._replay_queue.extend((path, wait) for path in fresh)
        self._top_up(time.monotonic())
        return len(fresh)

    def _top_up(self, now: float) -> None:
        while self._replay_queue and self._replay_bytes < REPLAY_BYTES:
            path, wait = self._replay_queue.pop(0)
            kept = self.store.load(path) if path.exists() else None
            if kept is None:
                continue
            msg = Message(topic=kept.topic, partition=kept.partition, offset=kept.offset, key=kept.key,
                          value=kept.value, timestamp=(1, kept.timestamp) if kept.timestamp else (0, 0))
            self._replays[path] = _Pending(msg=msg, key_index=kept.key_index, deadline=now + wait, next_try=now,
                                           kept=kept)
            self._replay_bytes += len(kept.value)

    def _probe_kept(self, now: float) -> None:
        """One message per key index is tried; when it opens, all kept under that key are read again."""
        tried: set[tuple[str, str]] = set()
        for entry in self.store.entries():
            group = (entry.topic, entry.key_id)
            if group in tried or entry.path in self._replays:
                continue
            tried.add(group)
            kept = self.store.load(entry.path)
            if kept is None:
                continue
            try:
                opened = self.node.decrypt(kept.topic, kept.key, kept.value)
            except NotDecryptable:
                continue
            if opened is not NOT_YET:
                log.info("keys arrived for kept messages; reading them again", topic=kept.topic)
                self.retry_kept(wait_s=self.settings.max_wait_s)
                return

    def bind(self, file_key: object, kept: KeptMessage) -> None:
        """A kept message's chunk was staged for ``file_key``: delete its file when that file is finished."""
        self._bound.setdefault(file_key, []).append(kept.path)

    def dispose(self, kept: KeptMessage) -> None:
        """A kept message was decrypted and needs nothing more (unwanted, duplicate, already done)."""
        self.store.remove(kept.path)

    def file_finished(self, file_key: object) -> None:
        for path in self._bound.pop(file_key, ()):
            self.store.remove(path)

    # -- reporting ---------------------------------------------------------------------------------
    def waiting(self) -> int:
        return len(self._live) + len(self._replays) + len(self._replay_queue)

    def describe(self) -> dict:
        now = time.monotonic()
        return {"node_id": self.node.node_id, "decrypted": self.stats.decrypted, "waiting_for_keys": self.waiting(),
                "kept": self.store.count(), "kept_total": self.stats.kept, "recovered": self.stats.recovered,
                "passed_as_plaintext": self.stats.plaintext,
                "oldest_wait_s": round(max((now - t for t in self.stats.waiting_since.values()), default=0.0), 1)}
