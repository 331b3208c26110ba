"""Test helpers: produce files as OpenMSIStream chunk messages and run the daemon."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import Producer

from omsd.wire.protocol import chunk_key, encode_chunk
from omsd.wire.sharding import shard_for

REPO = Path(__file__).resolve().parent.parent


def chunk_messages(rel_path: str, data: bytes, chunk_size: int = 1 << 16, mtime: float = 0.0) -> list[tuple[str, bytes]]:
    """(key, value) of every chunk of one file, in order."""
    subdir, _, name = rel_path.rpartition("/")
    file_hash = hashlib.sha512(data).digest()
    offsets = list(range(0, len(data), chunk_size)) or [0]
    out = []
    for i, offset in enumerate(offsets, start=1):
        piece = data[offset:offset + chunk_size]
        out.append((chunk_key(subdir, name, i, len(offsets)),
                    encode_chunk(filename=name, file_hash=file_hash, data=piece, offset=offset, chunk_i=i,
                                 n_total_chunks=len(offsets), subdir_str=subdir, file_mtime=mtime)))
    return out


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[str | None, bytes | None, int | None]]) -> None:
    """Produce (key, value, partition) triples and wait for every acknowledgement."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 64 << 20})
    errors: list[str] = []
    for key, value, partition in messages:
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                producer.produce(topic, key=key, value=value,
                                 on_delivery=lambda err, _m: errors.append(str(err)) if err else None, **kwargs)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors


def produce_files(bootstrap: str, topic: str, files: dict[str, bytes], chunk_size: int = 1 << 16,
                  partitions: int = 4, shuffle: Callable[[list], None] | None = None) -> None:
    """Send whole files, every chunk of a file to its path's partition (as `omsd upload` does)."""
    messages = []
    for rel, data in files.items():
        part = shard_for(rel, partitions)
        messages += [(k, v, part) for k, v in chunk_messages(rel, data, chunk_size)]
    if shuffle:
        shuffle(messages)
    produce(bootstrap, topic, messages)


def start_daemon(args: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """`omsd ARGS...` in the background, its output in ``log_path``."""
    out = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "omsd.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            cwd=REPO, env={**os.environ, **(env or {})})


def stop_daemon(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (log_path.read_text()[-4000:] if log_path else ""))
        time.sleep(0.1)
    tail = log_path.read_text()[-4000:] if log_path and log_path.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative posix path → bytes).

    A daemon may be saving while this looks: a temporary file listed here can be renamed away before
    it is read; it is then simply not part of this snapshot.
    """
    out = {}
    for path in sorted(root.rglob("*")):
        try:
            if path.is_file():
                out[path.relative_to(root).as_posix()] = path.read_bytes()
        except FileNotFoundError:
            continue
    return out


def json_lines(path: Path | str) -> list[dict]:
    """The JSON lines a test's step function appended to ``path``, in order ([] before the first)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def log_events(log_path: Path) -> list[dict]:
    """The daemon's JSON log lines; any other line (librdkafka's raw output, say) as ``{"raw": line}``."""
    out = []
    for line in log_path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"raw": line})
    return out
