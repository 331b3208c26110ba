"""`omsd upload` against a real broker: what arrives is read back with a plain consumer and decoded."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from omsd.dev.broker import EmbeddedBroker, free_port
from omsd.wire.protocol import EMPTY_SHA512, Chunk, chunk_key, decode_chunk
from omsd.wire.sharding import shard_for
from tests.conftest import client_props, write_config

ROOT = Path(__file__).resolve().parents[2]


# -- helpers (also used by test_compat_upload) --------------------------------


class TopicReader:
    """Reads every message of a topic from the beginning, partition by partition (no group join)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 4) -> None:
        self.consumer = Consumer({**client_props(bootstrap), "group.id": f"read-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "fetch.max.bytes": 64 << 20})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.messages: list[tuple[int, str, Chunk]] = []  # partition, key, decoded chunk
        self.value_bytes = 0  # total length of the message values read

    def read_until(self, done: Callable[[list[tuple[int, str, Chunk]]], bool], timeout: float = 20.0,
                   extra: float = 0.0) -> list[tuple[int, str, Chunk]]:
        """Poll until ``done(messages)`` holds (then ``extra`` seconds more) or the timeout passes."""
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is not None and not msg.error():
                self.value_bytes += len(msg.value())
                self.messages.append((msg.partition(), msg.key().decode("utf-8"), decode_chunk(msg.value())))
            if settle_until is None and done(self.messages):
                settle_until = time.monotonic() + extra
            if settle_until is not None and time.monotonic() >= settle_until:
                break
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def reassemble(messages: list[tuple[int, str, Chunk]]) -> dict[str, bytes]:
    """Complete files by relative path (latest generation wins), verified against their sha512."""
    by_file: dict[tuple[str, bytes], dict[int, Chunk]] = defaultdict(dict)
    order: list[tuple[str, bytes]] = []
    for _, _, chunk in messages:
        ident = (chunk.relative_path, chunk.file_hash)
        if ident not in by_file:
            order.append(ident)
        by_file[ident][chunk.offset] = chunk
    files: dict[str, bytes] = {}
    for rel, file_hash in order:
        chunks = by_file[(rel, file_hash)]
        first = next(iter(chunks.values()))
        if len(chunks) != first.n_total_chunks:
            continue
        data = b"".join(c.data for _, c in sorted(chunks.items()))
        assert hashlib.sha512(data).digest() == file_hash, rel
        files[rel] = data
    return files


def has_files(expected: dict[str, bytes]) -> Callable[[list], bool]:
    return lambda messages: all(reassemble(messages).get(rel) == data for rel, data in expected.items())


def omsd_upload(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omsd.cli", "upload", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def make_tree(root: Path) -> dict[str, bytes]:
    """A small tree: subdirectories, unicode and space names, an empty file, multi-chunk files."""
    files = {
        "top.bin": os.urandom(250_000),
        "a/b/deep.dat": os.urandom(100_001),
        "a/one chunk.txt": b"hello world\n",
        "sp ace/ünï cödé ✓.csv": "x,y\n1,2\n".encode() * 5000,
        "empty.txt": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


# -- one-shot uploads ------------------------------------------------------------


def test_tree_arrives_intact_with_keys_subdirs_and_file_affine_partitions(broker: EmbeddedBroker, topic: str,
                                                                           tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    loose = tmp_path / "elsewhere" / "loose file.bin"
    loose.parent.mkdir()
    loose.write_bytes(os.urandom(70_000))
    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)

    proc = omsd_upload(tree, loose, "--config", config, "--topic", topic, "--chunk-size", "32768")
    assert proc.returncode == 0, proc.stderr
    assert "uploaded 6 files" in proc.stderr

    expected = {**files, "loose file.bin": loose.read_bytes()}
    reader = TopicReader(broker.bootstrap, topic)
    messages = reader.read_until(has_files(expected), extra=0.5)
    reader.close()
    assert reassemble(messages) == expected

    partitions: dict[str, set[int]] = defaultdict(set)
    for partition, key, chunk in messages:
        assert key == chunk_key(chunk.subdir_str, chunk.filename, chunk.chunk_i, chunk.n_total_chunks)
        partitions[chunk.relative_path].add(partition)
        source = tree / chunk.relative_path if chunk.relative_path in files else loose
        assert chunk.file_mtime == pytest.approx(source.stat().st_mtime)
    assert {rel: parts for rel, parts in partitions.items()} == {rel: {shard_for(rel, 4)} for rel in expected}

    by_rel = {chunk.relative_path: chunk for _, _, chunk in messages}
    assert by_rel["a/b/deep.dat"].subdir_str == "a/b"
    assert by_rel["sp ace/ünï cödé ✓.csv"].subdir_str == "sp ace"
    assert by_rel["top.bin"].subdir_str == "" and by_rel["loose file.bin"].subdir_str == ""
    empty = [chunk for _, _, chunk in messages if chunk.relative_path == "empty.txt"]
    assert len(empty) == 1
    assert (empty[0].data, empty[0].offset, empty[0].chunk_i, empty[0].n_total_chunks) == (b"", 0, 1, 1)
    assert empty[0].file_hash == EMPTY_SHA512 == empty[0].chunk_hash
    assert len([m for m in messages if m[2].relative_path == "top.bin"]) == 8  # 250000 / 32768, rounded up


def test_default_partitioner_spreads_one_file_over_partitions(broker: EmbeddedBroker, topic: str,
                                                              tmp_path: Path) -> None:
    data = os.urandom(64 * 1024)
    (tmp_path / "spread.bin").write_bytes(data)
    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)

    proc = omsd_upload(tmp_path / "spread.bin", "--config", config, "--topic", topic,
                       "--chunk-size", "1024", "--partitioner", "default", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""

    reader = TopicReader(broker.bootstrap, topic)
    messages = reader.read_until(has_files({"spread.bin": data}))
    reader.close()
    assert reassemble(messages) == {"spread.bin": data}
    assert len({partition for partition, _, _ in messages}) > 1


def test_missing_path_is_a_one_line_error(broker: EmbeddedBroker, topic: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)
    (tmp_path / "real.bin").write_bytes(b"x")
    proc = omsd_upload(tmp_path / "real.bin", tmp_path / "nope.bin", "--config", config, "--topic", topic)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0
    assert "nope.bin does not exist" in proc.stderr


def test_unreachable_broker_fails_fast_with_one_line(tmp_path: Path, topic: str) -> None:
    config = write_config(tmp_path / "omsd.yaml", f"127.0.0.1:{free_port()}")
    (tmp_path / "f.bin").write_bytes(b"data")
    started = time.monotonic()
    proc = omsd_upload(tmp_path / "f.bin", "--config", config, "--topic", topic, "--connect-timeout", "1.5")
    assert proc.returncode != 0
    assert time.monotonic() - started < 15
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "the broker at 127.0.0.1:" in lines[0]  # refused at once, or not reached in time


PROGRESS = re.compile(r"sent (\d+)/(\d+) files, ([\d.]+ [kMG]?B)/([\d.]+ [kMG]?B); "
                      r"acknowledged (\d+) files, ([\d.]+ [kMG]?B); [\d.]+ [kMG]?B/s")


def test_progress_without_a_terminal_says_sent_and_acknowledged(broker: EmbeddedBroker, topic: str,
                                                                  tmp_path: Path) -> None:
    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.bin").write_bytes(os.urandom(8_000_000))
    proc = omsd_upload(data, "--config", config, "--topic", topic, "--progress-every", "0.05")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    progress = [PROGRESS.fullmatch(line) for line in lines[:-1]]
    assert progress and all(progress), lines  # lines, not redraws: no terminal
    for m in progress:
        sent, total, acked = int(m.group(1)), int(m.group(2)), int(m.group(5))
        assert total == 3 and acked <= sent <= 3 and m.group(4) == "24.0 MB"
    assert lines[-1].startswith(f"uploaded 3 files (24.0 MB) to '{topic}'")
    quiet = omsd_upload(data, "--config", config, "--topic", topic, "--progress-every", "0")
    assert quiet.returncode == 0 and len(quiet.stderr.strip().splitlines()) == 1  # only the summary


def test_progress_on_a_terminal_is_redrawn_and_ends_with_everything_acknowledged(broker: EmbeddedBroker, topic: str,
                                                                                 tmp_path: Path) -> None:
    import pty

    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)
    (tmp_path / "a.bin").write_bytes(os.urandom(3_000_000))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "omsd.cli", "upload", str(tmp_path / "a.bin"), "--config",
                             str(config), "--topic", topic], cwd=ROOT, stderr=slave, stdout=slave)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(60) == 0
    os.close(master)
    text = output.decode()
    redraws = [part.strip() for part in text.split("\r") if PROGRESS.match(part.strip())]
    final = PROGRESS.match(redraws[-1])
    assert final.group(1) == final.group(2) == final.group(5) == "1", redraws  # sent 1/1, acknowledged 1
    assert final.group(3) == final.group(4) == final.group(6) == "3.0 MB"  # bytes agree with files


# -- watch mode ----------------------------------------------------------------


class Watcher:
    """`omsd upload --watch` as a child process."""

    def __init__(self, directory: Path, config: Path, topic: str, state: Path, log: Path, *extra: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omsd.cli", "upload", str(directory), "--watch", "--config", str(config),
             "--topic", topic, "--stable-secs", "0.4", "--state", str(state), "--chunk-size", "16384", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "a"))
        deadline = time.monotonic() + 15
        while "watching " not in log.read_text() and time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            self.kill()

    def kill(self) -> None:
        """Kill it if it still runs (a test that failed before stopping it)."""
        if self.proc.poll() is None:
            self.proc.kill()


def sent_after_restart(watcher: Watcher, watched: Path, reader: TopicReader, settle: float) -> list[str]:
    """What a restarted ``watcher`` sends: it settles ``settle`` s, a marker file is written and read, it stops.

    Returns the relative paths of the chunks read since the call (a watcher that re-sends nothing: ["marker"]);
    the reader is closed.
    """
    sent_before = len(reader.messages)
    try:
        time.sleep(settle)  # anything it would send again is on its way by now
        (watched / "marker").write_bytes(b"m")
        reader.read_until(has_files({"marker": b"m"}), timeout=20, extra=1.0)
        assert watcher.stop() == 0
    finally:
        watcher.kill()
        reader.close()
    return [chunk.relative_path for _, _, chunk in reader.messages[sent_before:]]


def test_watch_uploads_new_and_changed_files_once_and_stops_on_sigterm(broker: EmbeddedBroker, topic: str,
                                                                       tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    (watched / "sub").mkdir(parents=True)
    (watched / "existing.txt").write_bytes(b"present before the start\n")
    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)
    state, log = tmp_path / "state" / "upload.sqlite", tmp_path / "watch.log"

    watcher = Watcher(watched, config, topic, state, log, "--upload-existing")
    reader = TopicReader(broker.bootstrap, topic)
    try:
        first = {"existing.txt": b"present before the start\n", "sub/new file.bin": os.urandom(50_000),
                 "later/ü.txt": b"in a directory created after the start\n", "empty": b""}
        (watched / "sub" / "new file.bin").write_bytes(first["sub/new file.bin"])
        (watched / "later").mkdir()
        (watched / "later" / "ü.txt").write_bytes(first["later/ü.txt"])
        (watched / "empty").write_bytes(b"")
        (watched / ".hidden.tmp").write_bytes(b"ignored")
        reader.read_until(has_files(first), timeout=20)
        assert reassemble(reader.messages) == first

        changed = os.urandom(40_000)
        (watched / "sub" / "new file.bin").write_bytes(changed)
        reader.read_until(has_files({"sub/new file.bin": changed}), timeout=20)
        assert reassemble(reader.messages)["sub/new file.bin"] == changed
        assert watcher.stop() == 0
    finally:
        watcher.kill()
    assert "Traceback" not in log.read_text()
    assert not any(chunk.filename.startswith(".") for _, _, chunk in reader.messages)

    # A restart sends nothing again, not even a file whose mtime alone changed.
    os.utime(watched / "existing.txt", ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    watcher = Watcher(watched, config, topic, state, log)
    assert sent_after_restart(watcher, watched, reader, settle=0.8) == ["marker"]  # 0.8 s > --stable-secs
