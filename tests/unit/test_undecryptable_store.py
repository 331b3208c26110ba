"""Kept undecryptable messages: durable files, listed from their names, grouped by key, removed once used."""

from __future__ import annotations

from pathlib import Path

from omsd.intake.undecryptable import UndecryptableStore, key_id


def test_keep_list_load_and_remove(tmp_path: Path) -> None:
    store = UndecryptableStore(tmp_path, "group/with slash")
    first = store.keep("raw.files", 2, 17, 1234, b"\x01key", b"\x01" + b"v" * 1000, b"K1", "no key in time")
    again = store.keep("raw.files", 2, 17, 1234, b"\x01key", b"\x01" + b"v" * 1000, b"K1", "no key in time")
    store.keep("raw.files", 0, 3, None, None, b"\x01w", b"K2", "no key in time")
    assert first == again and store.count() == 2  # the same message read twice is one file
    assert first.parent.parent == tmp_path / "undecryptable" and "/" not in first.parent.name
    entries = {(e.topic, e.partition, e.offset): e for e in store.entries()}
    assert set(entries) == {("raw.files", 2, 17), ("raw.files", 0, 3)}
    assert entries[("raw.files", 2, 17)].key_id == key_id(b"K1") != key_id(b"K2")
    kept = store.load(first)
    assert (kept.key, kept.value, kept.timestamp, kept.key_index) == (b"\x01key", b"\x01" + b"v" * 1000, 1234, b"K1")
    store.remove(first)
    store.remove(first)  # already gone: no error
    assert store.count() == 1 and [e.offset for e in store.entries()] == [3]
    assert not list(first.parent.glob(".*.tmp"))  # no temporary file left behind


class _OpenNode:
    """Stands in for a CryptoNode whose keys have all arrived: every message opens as itself."""

    node_id = "n"

    def decrypt(self, topic: str, key: bytes | None, value: bytes) -> tuple[bytes | None, bytes]:
        return key, value


def test_kept_messages_are_read_back_a_bounded_amount_at_a_time(tmp_path: Path, monkeypatch) -> None:
    from omsd.crypto.settings import CryptoSettings
    from omsd.intake import decrypt
    from omsd.intake.watermark import Watermarks

    monkeypatch.setattr(decrypt, "REPLAY_BYTES", 250)
    store = UndecryptableStore(tmp_path, "g")
    for offset in range(5):
        store.keep("t", 0, offset, None, b"k", b"v" * 100, b"K", "no key in time")
    decryptor = decrypt.Decryptor(_OpenNode(), CryptoSettings(config_file=tmp_path / "n.config"), store,
                                  Watermarks())
    assert decryptor.retry_kept() == 5
    assert decryptor.retry_kept() == 0  # already queued
    assert len(decryptor._replays) == 3 and decryptor.waiting() == 5  # 300 bytes read, 2 still on disk only
    opened = decryptor.ready()
    assert [o.msg.offset() for o in opened] == [0, 1, 2] and all(o.kept is not None for o in opened)
    assert [o.msg.offset() for o in decryptor.ready()] == [3, 4]  # read once the first ones left
    assert decryptor.waiting() == 0


class _ClosedNode(_OpenNode):
    """A CryptoNode whose keys never arrive."""

    def decrypt(self, topic: str, key: bytes | None, value: bytes) -> None:
        return None


def test_messages_waiting_in_memory_are_bounded(tmp_path: Path, monkeypatch) -> None:
    from confluent_kafka import Message

    from omsd.crypto.settings import CryptoSettings
    from omsd.intake import decrypt
    from omsd.intake.watermark import Watermarks

    monkeypatch.setattr(decrypt, "WAITING_BYTES", 1000)
    watermarks = Watermarks()
    store = UndecryptableStore(tmp_path, "g")
    decryptor = decrypt.Decryptor(_ClosedNode(), CryptoSettings(config_file=tmp_path / "n.config"), store,
                                  watermarks)
    messages = [Message(topic="t", partition=0, offset=i, key=b"k", value=b"\x01" + b"v" * 299) for i in range(6)]
    assert decryptor.admit(messages) == []  # all wait for their key
    assert decryptor.waiting() == 6 and watermarks.safe(("t", 0)) == 0  # and hold the partition's offset
    decryptor.ready()
    assert store.count() == 5 and decryptor.waiting() == 1  # 1800 bytes > 1000: the oldest kept down to 500
    assert watermarks.safe(("t", 0)) == 5  # the kept ones no longer hold the commit back


def test_a_partition_waits_until_its_last_held_message_leaves(tmp_path: Path, monkeypatch) -> None:
    from confluent_kafka import Message

    from omsd.crypto.settings import CryptoSettings
    from omsd.intake import decrypt
    from omsd.intake.watermark import Watermarks

    monkeypatch.setattr(decrypt, "WAITING_BYTES", 1000)
    decryptor = decrypt.Decryptor(_ClosedNode(), CryptoSettings(config_file=tmp_path / "n.config"),
                                  UndecryptableStore(tmp_path, "g"), Watermarks())
    decryptor.admit([Message(topic="t", partition=p, offset=i, key=b"k", value=b"\x01" + b"v" * 299)
                     for p, i in ((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1))])
    assert set(decryptor.stats.waiting_since) == {("t", 0), ("t", 1)}
    decryptor.ready()  # 1800 bytes > 1000: the five oldest are kept, down to 300 bytes
    assert decryptor.waiting() == 1 and decryptor.store.count() == 5
    # partition 0 has nothing held any more; partition 1 still has its offset 1
    assert set(decryptor.stats.waiting_since) == {("t", 1)}
    decryptor.drop_partitions({("t", 1)})
    assert decryptor.waiting() == 0 and decryptor.stats.waiting_since == {}
    assert decryptor.describe()["oldest_wait_s"] == 0.0
