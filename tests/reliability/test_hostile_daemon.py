"""Hostile input through the running daemon: a table of known attacks and a property-based stream.

Every hostile message is interleaved with good files. Afterwards the good
files are byte-identical, the hostile ones never reached a pipeline step,
nothing was written outside the output and state directories, every
rejection is counted in `status` and logged with topic/partition/offset, the
daemon is healthy, commits have moved past everything, and the memory of
the daemon and its workers stayed within a budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psutil
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from omsd.control.client import ControlClient
from omsd.wire.protocol import encode_chunk
from omsd.wire.sharding import shard_for
from tests.chunks import REPO, chunk_messages, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import write_config
from tests.integration.test_daemon_hostile import chunk_value, hostile_messages
from tests.reliability.faults_funcs import recorded

PARTITIONS = 4  # the embedded broker auto-creates topics with four
MAX_FILE = 64 << 20
EXPIRE_S = 4
# Resident memory of the daemon, its 2 workers and multiprocessing's helper: a fixed overhead whatever the
# input (file bytes live in /dev/shm and spill files, not in process memory). Measured: ~110 MiB.
RSS_BUDGET = 256 << 20

Message = tuple["str | None", "bytes | None", int]  # key, value, partition


# -- helpers -----------------------------------------------------------------------------------------
def produce_tracked(bootstrap: str, topic: str, messages: list[Message]) -> list[tuple[int, int]]:
    """Produce in order (per partition) and return each message's (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 64 << 20,
                         "max.in.flight.requests.per.connection": 1})
    where: list[tuple[int, int] | None] = [None] * len(messages)
    errors: list[str] = []

    def delivered(i: int):
        def callback(err, msg) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                where[i] = (msg.partition(), msg.offset())
        return callback

    for i, (key, value, partition) in enumerate(messages):
        producer.produce(topic, key=key, value=value, partition=partition, on_delivery=delivered(i))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors
    return [w for w in where if w is not None]


def good_chunks(rel: str, data: bytes, chunk_size: int = 16_384, key: bool = True) -> list[Message]:
    part = shard_for(rel, PARTITIONS)
    return [(k if key else None, v, part) for k, v in chunk_messages(rel, data, chunk_size)]


def chunk_fields(rel: str, content: bytes, offset: int, length: int, n_total: int, chunk_i: int) -> list:
    """The ten msgpack fields of one valid chunk of ``content``."""
    subdir, _, name = rel.rpartition("/")
    data = content[offset:offset + length]
    return [name, hashlib.sha512(content).digest(), hashlib.sha512(data).digest(), offset, chunk_i, n_total,
            subdir, "", data, 0.0]


def pack(fields: list) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def log_events(log: Path, event: str) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("event") == event:
                    out.append(entry)
    return out


def rejections_logged(log: Path, topic: str) -> dict[tuple[int, int], str]:
    """(partition, offset) → reason of every 'rejected message' log line about ``topic``."""
    return {(e["partition"], e["offset"]): e["reason"] for e in log_events(log, "rejected message")
            if e.get("topic") == topic}


def family_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants (the daemon and its workers)."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def files_outside(root: Path, allowed: list[Path]) -> list[str]:
    """Everything under ``root`` that is neither inside one of ``allowed`` nor a directory leading to one."""
    strays = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            path = Path(dirpath, name)
            inside = any(path == a or a in path.parents for a in allowed)
            on_the_way = name in dirnames and any(path in a.parents for a in allowed)
            if not (inside or on_the_way):
                strays.append(str(path.relative_to(root)))
    return strays


def omsctl_check(cfg: Path) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), "check"], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    return result.returncode, result.stdout


class Daemon:
    """A running `omsd run` with its directories, control client and log."""

    def __init__(self, root: Path, bootstrap: str, topic: str, verify: str = "on_mismatch") -> None:
        self.root = root
        self.bootstrap = bootstrap
        self.topic = topic
        self.out = root / "jail" / "a" / "b" / "out"  # deep: an escape by '..' would land inside root
        self.state = root / "state"
        self.log = root / "daemon.log"
        self.record = root / "record.tsv"
        self.cfg = write_config(root / "omsd.yaml", bootstrap, state_dir=self.state, extra=f"""workers: 2
retry_failed_after_secs: 0
staging: {{memory_bytes: 8MiB, max_file_bytes: {MAX_FILE}, expire_incomplete_secs: {EXPIRE_S},
           verify_chunk_hashes: {verify}}}
pipelines:
  - name: mirror
    topic: {topic}
    steps:
      - save: {{dir: {self.out}}}
      - call: {{function: tests.reliability.faults_funcs:record}}
""")
        self.proc = start_daemon(["run", "--config", str(self.cfg)], self.log,
                                 {"OMSD_FAULTS_RECORD": str(self.record)})
        self.wait(lambda: (self.state / "omsd.sock").exists(), 30, "the control socket")
        self.client = ControlClient(self.state / "omsd.sock")

    def wait(self, predicate, timeout: float, what: str) -> None:
        wait_for(predicate, timeout, what, self.proc, self.log)

    def status(self) -> dict:
        return self.client.request("status")

    def failed(self) -> dict[str, dict]:
        return {row["path"]: row for row in self.client.request("failed")["files"]}

    def saved(self) -> dict[str, bytes]:
        return tree(self.out) if self.out.exists() else {}

    def stop(self) -> None:
        assert stop_daemon(self.proc) == 0, self.log.read_text()[-3000:]

    def assert_contained(self) -> None:
        """Nothing written anywhere but the output and state directories (and the test's own files)."""
        allowed = [self.out, self.state, self.log, self.cfg, self.record]
        assert files_outside(self.root, allowed) == []


@contextlib.contextmanager
def running(root: Path, bootstrap: str, topic: str, verify: str = "on_mismatch") -> Iterator[Daemon]:
    daemon = Daemon(root, bootstrap, topic, verify)
    try:
        yield daemon
    except BaseException:
        with contextlib.suppress(Exception):
            stop_daemon(daemon.proc, timeout=20)
        raise
    daemon.stop()


# -- the table -----------------------------------------------------------------------------------------
def more_hostile_messages(escape_dir: str) -> list[tuple[str | None, bytes | None, str]]:
    """(key, value, expected reason): beyond the integration table in tests/integration/test_daemon_hostile.py."""
    good = hashlib.sha512(b"payload").digest()
    ten = ["x.bin", good, good, 0, 1, 1, "", "", b"payload", 0.0]

    def with_field(i: int, value: object) -> bytes:
        return pack(ten[:i] + [value] + ten[i + 1:])

    valid = chunk_value()
    return [
        # garbage, empties and None keys
        (None, b"\xc1\xc1\xc1", "undecodable"),
        (None, None, "empty"),
        (None, b"\xc1" + random.Random(1).randbytes(64), "undecodable"),
        ("truncated", valid[:-5], "undecodable"),
        ("trailing", valid + b"\x00", "undecodable"),
        ("array-bomb", b"\xdd\xff\xff\xff\xff", "undecodable"),
        ("nesting-bomb", b"\x91" * 100_000 + b"\xc0", "undecodable"),
        ("bin-bomb", b"\xc6\xff\xff\xff\xf0" + b"x" * 16, "undecodable"),
        # wrong shapes and field counts
        ("nil", pack(None), "bad_shape"),
        ("int", pack(42), "bad_shape"),
        ("zero-fields", pack([]), "bad_shape"),
        ("one-field", pack(["x.bin"]), "bad_shape"),
        ("hundred-fields", pack(ten * 10), "bad_shape"),
        # wrong field types
        ("int-filename", with_field(0, 7), "bad_field"),
        ("short-file-hash", with_field(1, good[:63]), "bad_field"),
        ("str-chunk-hash", with_field(2, "0" * 64), "bad_field"),
        ("float-offset", with_field(3, 0.0), "bad_field"),
        ("bool-chunk-i", with_field(4, True), "bad_field"),
        ("none-n-total", with_field(5, None), "bad_field"),
        ("bad-utf8-subdir", with_field(6, b"\xff\xfe"), "bad_field"),
        ("list-append", with_field(7, ["a"]), "bad_field"),
        ("str-data", with_field(8, "payload"), "bad_field"),
        ("nan-mtime", with_field(9, math.nan), "bad_field"),
        ("negative-mtime", with_field(9, -1.0), "bad_field"),
        ("str-mtime", with_field(9, "yesterday"), "bad_field"),
        # paths
        ("deep-dotdot", chunk_value(subdir_str="x/../../../escape"), "unsafe_path"),
        ("dotdot-file", chunk_value(filename="../../../escape.bin"), "unsafe_path"),
        ("slash-file", chunk_value(filename=f"{escape_dir}/abs.bin"), "unsafe_path"),
        ("abs-subdir", chunk_value(subdir_str=escape_dir), "unsafe_path"),
        ("dot-subdir", chunk_value(subdir_str="./x"), "unsafe_path"),
        ("empty-component", chunk_value(subdir_str="a//b"), "unsafe_path"),
        ("trailing-slash", chunk_value(subdir_str="a/"), "unsafe_path"),
        ("empty-filename", chunk_value(filename=""), "unsafe_path"),
        ("nul-subdir", chunk_value(subdir_str="a\x00b"), "unsafe_path"),
        ("backslash-file", chunk_value(filename="..\\..\\escape.bin"), "unsafe_path"),
        ("long-component", chunk_value(filename="n" * 256), "unsafe_path"),
        ("long-path", chunk_value(subdir_str="/".join(["d" * 200] * 21)), "unsafe_path"),
        ("append-escape", chunk_value(filename_append="/../../../escape"), "unsafe_path"),
        ("append-nul", chunk_value(filename_append="\x00"), "unsafe_path"),
        # ranges
        ("n-total-zero", chunk_value(n_total_chunks=0), "bad_range"),
        ("chunk-i-zero", chunk_value(chunk_i=0), "bad_range"),
        ("negative-offset", chunk_value(offset=-1, n_total_chunks=2), "bad_range"),
        ("empty-second-chunk", chunk_value(data=b"", chunk_i=1, n_total_chunks=2), "bad_range"),
        ("offset-past-limit", chunk_value(offset=MAX_FILE, n_total_chunks=2), "too_large"),
        ("offset-2^63", with_field(3, 2**63), "too_large"),
        ("n-total-2^64-1", with_field(5, 2**64 - 1), "too_large"),
    ]


@pytest.mark.parametrize("verify", ["on_mismatch", "at_intake"])
def test_table_of_hostile_messages_through_the_daemon(verify, broker, topic, tmp_path) -> None:
    rng = random.Random(21)
    escape_dir = f"/tmp/omsd-escape-{uuid.uuid4().hex[:8]}"
    good = {f"good/g{i}.bin": rng.randbytes(rng.randint(1, 90_000)) for i in range(8)}
    good["good/empty.dat"] = b""
    good["ünï cödé/naïve file.bin"] = rng.randbytes(20_000)
    good["keyless/k.bin"] = rng.randbytes(50_000)  # every chunk has a None key: keys are not trusted
    messages: list[Message] = []
    expected: list[str | None] = []  # the rejection reason of each message, None for accepted ones

    def add(batch: list[Message], reason: str | None = None) -> None:
        messages.extend(batch)
        expected.extend([reason] * len(batch))

    # Good files and hostile messages, shuffled together.
    mixed: list[tuple[Message, str | None]] = []
    for rel, data in good.items():
        mixed += [(m, None) for m in good_chunks(rel, data, key=not rel.startswith("keyless/"))]
    # (chunk-hash mismatches are below: what happens to them depends on staging.verify_chunk_hashes)
    table = [m for m in hostile_messages() + more_hostile_messages(escape_dir) if m[2] != "chunk_hash_mismatch"]
    mixed += [((k, v, rng.randrange(PARTITIONS)), r) for k, v, r in table]
    rng.shuffle(mixed)
    for message, reason in mixed:
        add([message], reason)

    # Order-dependent cases, each in one partition, in this order.
    cs = 16_384
    at_intake = verify == "at_intake"
    failed_expected = {"corrupt/c.bin"}
    saved_expected: dict[str, bytes] = {}
    # chunk-hash mismatches. Right data under a wrong chunk_hash: rejected at intake, or (on_mismatch) the
    # whole-file sha512 proves the bytes and the file is saved.
    h1 = rng.randbytes(1000)
    h1_fields = chunk_fields("hash/wrong-field.bin", h1, 0, 1000, 1, 1)
    h1_fields[2] = hashlib.sha512(b"not the data").digest()
    add([(None, pack(h1_fields), 0)], "chunk_hash_mismatch" if at_intake else None)
    saved_expected.update({} if at_intake else {"hash/wrong-field.bin": h1})
    # Wrong data under the right hashes: rejected at intake, or the file fails and the message is named.
    h2 = rng.randbytes(1000)
    h2_fields = chunk_fields("hash/wrong-data.bin", h2, 0, 1000, 1, 1)
    h2_fields[8] = bytes([h2[0] ^ 1]) + h2[1:]
    add([("wrong-data", pack(h2_fields), 1)], "chunk_hash_mismatch")
    # (on_mismatch: the file is reopened for a good copy of the chunk; none comes, so it expires as corrupt)
    failed_expected |= set() if at_intake else {"hash/wrong-data.bin"}
    # A corrupt copy of a chunk before the good one: at intake the good copy completes the file;
    # on_mismatch the corrupt copy is staged, the whole-file hash fails, the corrupt message is named,
    # and the file is read again without it: the good copy completes it.
    h3 = rng.randbytes(3 * cs)
    h3c = good_chunks("hash/second-copy.bin", h3, cs)
    bad_copy = chunk_fields("hash/second-copy.bin", h3, cs, cs, 3, 2)
    bad_copy[8] = bytes(cs)
    add([("bad-copy", pack(bad_copy), h3c[0][2])], "chunk_hash_mismatch")
    add(h3c)
    saved_expected["hash/second-copy.bin"] = h3
    # a chunk that contradicts its file's chunk count, between the file's good chunks
    x = rng.randbytes(3 * cs)
    xc = good_chunks("order/x.bin", x, cs)
    add(xc[:1])
    add([("x-liar", pack(chunk_fields("order/x.bin", x, cs, cs, 4, 2)), xc[0][2])], "inconsistent")
    add(xc[1:])
    # whole-file hash mismatch: consistent chunks whose file_hash is not that of their bytes
    corrupt = rng.randbytes(3 * cs)
    wrong_hash = hashlib.sha512(b"something else").digest()
    add([(None, encode_chunk(filename="c.bin", file_hash=wrong_hash, data=corrupt[o:o + cs], offset=o,
                             chunk_i=i, n_total_chunks=3, subdir_str="corrupt"), 1)
         for i, o in enumerate(range(0, 3 * cs, cs), start=1)])
    # overlapping chunks with different data: after the file completed (harmless) ...
    v1 = rng.randbytes(3 * cs)
    add(good_chunks("overlap/after.bin", v1, cs))
    forged = rng.randbytes(cs)
    fake_fields = chunk_fields("overlap/after.bin", v1, cs // 2, cs, 3, 2)
    fake_fields[8], fake_fields[2] = forged, hashlib.sha512(forged).digest()
    add([("overlap-after", pack(fake_fields), shard_for("overlap/after.bin", PARTITIONS))])
    # ... and before its good chunks: the assembled bytes fail the whole-file hash, the forged message is
    # named (its own hash no longer matches the bytes at its place), and the file is read again without it,
    # so the genuine file is saved
    v2 = rng.randbytes(3 * cs)
    fake_fields = chunk_fields("overlap/before.bin", v2, cs // 2, cs, 3, 2)
    fake_fields[8], fake_fields[2] = forged, hashlib.sha512(forged).digest()
    add([("overlap-before", pack(fake_fields), shard_for("overlap/before.bin", PARTITIONS))], "chunk_hash_mismatch")
    add(good_chunks("overlap/before.bin", v2, cs))
    saved_expected["overlap/before.bin"] = v2
    # a changed file re-uploaded while its previous generation is still incomplete
    old, new = rng.randbytes(3 * cs), rng.randbytes(2 * cs + 99)
    add(good_chunks("regen/r.bin", old, cs)[:2])
    add(good_chunks("regen/r.bin", new, cs))
    # never-completing files, two of them with absurd but legal claims (sparse; nothing is allocated)
    never = rng.randbytes(5 * cs)
    add(good_chunks("never/n.bin", never, cs)[:1])
    huge_n = rng.randbytes(1000)
    add([("huge-n", pack(chunk_fields("never/huge-n.bin", huge_n, 0, 1000, 1_000_000, 1)), 2)])
    far = rng.randbytes(100)
    far_fields = chunk_fields("never/far.bin", far, 0, 100, 2, 1)
    far_fields[3] = MAX_FILE - 4096  # a first chunk written 64 MiB into its file
    add([("far-offset", pack(far_fields), 3)])
    # and good files after all of it
    tail = {f"tail/t{i}.bin": rng.randbytes(30_000) for i in range(3)}
    for rel, data in tail.items():
        add(good_chunks(rel, data))

    expected_saved = {**good, **saved_expected, "order/x.bin": x, "overlap/after.bin": v1, "regen/r.bin": new, **tail}
    expected_rejections = Counter(r for r in expected if r is not None)

    with running(tmp_path, broker.bootstrap, topic, verify) as daemon:
        where = produce_tracked(broker.bootstrap, topic, messages)
        assert len(where) == len(messages)
        daemon.wait(lambda: daemon.saved() == expected_saved, 60, "every good file saved")
        daemon.wait(lambda: daemon.status()["rejected"] == dict(expected_rejections), 20,
                    "every rejection counted by reason")
        daemon.wait(lambda: set(daemon.failed()) == failed_expected, 20,
                    "whole-file hash mismatches recorded as failed")
        # Never-completing files expire: staging empties and the commits move past every message.
        daemon.wait(lambda: not daemon.status()["in_progress"], 4 * EXPIRE_S + 10, "incomplete files expired")
        last = {}
        for partition, offset in where:
            last[partition] = max(last.get(partition, -1), offset)

        def committed_past_everything() -> bool:
            rows = {r["partition"]: r["committed"] for r in daemon.status()["partitions"] if r["topic"] == topic}
            return all(rows.get(p) == o + 1 for p, o in last.items())
        daemon.wait(committed_past_everything, 15, "commits past every message")
        status = daemon.status()
        assert status["staging"]["files"] == 0 and status["staging"]["memory_used"] == 0
        assert status["totals"]["files_failed"] == len(failed_expected)
        failed = daemon.failed()

        # Consumption goes on afterwards, and an expired file sent again in full is processed.
        late = {"late/after-all.bin": rng.randbytes(10_000), "never/n.bin": never}
        produce_tracked(broker.bootstrap, topic, [m for rel, data in late.items() for m in good_chunks(rel, data, cs)])
        daemon.wait(lambda: daemon.saved() == {**expected_saved, **late}, 30, "a file sent afterwards")

        code, report = omsctl_check(daemon.cfg)
        assert code == 0, report
        rss = family_rss(daemon.proc.pid)
        assert rss < RSS_BUDGET, f"daemon and workers use {rss >> 20} MiB"

    # Every rejected message logged with its topic, partition and offset, and the right reason.
    logged = rejections_logged(daemon.log, topic)
    want = {w: r for w, r in zip(where, expected) if r is not None}
    assert {w: logged.get(w) for w in want} == want
    assert len(logged) == len(want)
    # The failed ones: hash mismatches, bytes not kept, never saved.
    expired = {e["path"] for e in log_events(daemon.log, "incomplete file expired") if e.get("topic") == topic}
    assert {"never/n.bin", "never/huge-n.bin", "never/far.bin", "regen/r.bin"} <= expired
    # Each good file went through the pipeline once, on the right bytes; nothing hostile reached it.
    runs = recorded(daemon.record)
    assert sorted(runs) == sorted((rel, hashlib.sha512(d).hexdigest()) for rel, d in {**expected_saved, **late}.items())
    daemon.assert_contained()
    assert not Path(escape_dir).exists()
    # A file failing its whole-file hash is not kept for a retry: its bytes are known to be wrong.
    assert not any(row["kept"] for row in failed.values())


def test_a_file_spoiled_by_a_forged_chunk_is_repaired_or_processed_when_sent_again(broker, topic, tmp_path) -> None:
    """A forged copy of a chunk ahead of the genuine one does not cost the file; without a genuine copy
    the file ends up corrupt (never saved), and the genuine file sent again is saved."""
    rng = random.Random(5)
    cs = 16_384
    content = rng.randbytes(3 * cs)
    forged = rng.randbytes(cs)
    fields = chunk_fields("victim.bin", content, cs // 2, cs, 3, 2)
    fields[8], fields[2] = forged, hashlib.sha512(forged).digest()
    with running(tmp_path, broker.bootstrap, topic) as daemon:
        part = shard_for("victim.bin", PARTITIONS)  # the forged chunk first, in the file's own partition
        # 1. the genuine chunks follow the forged one: the file is read again without it and saved
        produce_tracked(broker.bootstrap, topic, [("forged", pack(fields), part),
                                                  *good_chunks("victim.bin", content, cs)])
        daemon.wait(lambda: daemon.saved().get("victim.bin") == content, 30, "the genuine file saved")
        assert daemon.status()["rejected"].get("chunk_hash_mismatch") == 1
        # 2. no genuine copy of chunk 2 this time: the file ends up corrupt and nothing is saved
        other = rng.randbytes(3 * cs)
        other_fields = chunk_fields("victim2.bin", other, cs // 2, cs, 3, 2)
        other_fields[8], other_fields[2] = forged, hashlib.sha512(forged).digest()
        good = good_chunks("victim2.bin", other, cs)
        part2 = shard_for("victim2.bin", PARTITIONS)
        produce_tracked(broker.bootstrap, topic, [("forged2", pack(other_fields), part2), good[0], good[2]])
        daemon.wait(lambda: "victim2.bin" in daemon.failed(), 4 * EXPIRE_S + 20, "the spoiled file recorded")
        assert "victim2.bin" not in daemon.saved()
        # 3. the uploader sends the file again (as a lab would): it is saved
        produce_tracked(broker.bootstrap, topic, good_chunks("victim2.bin", other, cs))
        daemon.wait(lambda: daemon.saved().get("victim2.bin") == other, 30, "the file sent again is saved")


# -- property-based: generated hostile messages --------------------------------------------------------
def _safe_name(draw) -> str:
    return draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
                 .filter(lambda s: s not in (".", "..")))


NOT_STR = st.one_of(st.integers(-2**63, 2**64 - 1), st.floats(), st.none(), st.booleans(),
                    st.lists(st.integers(0, 9), max_size=3))
NOT_HASH = st.one_of(st.binary(max_size=80).filter(lambda b: len(b) != 64), st.text(max_size=5), st.integers(0, 9),
                     st.none())
NOT_INT = st.one_of(st.text(max_size=5), st.floats(), st.booleans(), st.none(), st.binary(max_size=5))
NOT_BYTES = st.one_of(st.text(max_size=5), st.integers(0, 9), st.none(), st.lists(st.integers(0, 9), max_size=3))
NOT_MTIME = st.one_of(st.text(max_size=5), st.none(), st.binary(max_size=5), st.booleans(),
                      st.just(math.nan), st.just(math.inf), st.floats(max_value=-1e-6),
                      st.integers(-2**63, -1))
BAD_VALUES = {0: NOT_STR, 1: NOT_HASH, 2: NOT_HASH, 3: NOT_INT, 4: NOT_INT, 5: NOT_INT, 6: NOT_STR, 7: NOT_STR,
              8: NOT_BYTES, 9: NOT_MTIME}
UNSAFE_COMPONENTS = ["..", ".", "", "a\x00b", "a\\b", "n" * 256]
UNSAFE_NAMES = ["..", ".", "", "a/b", "/etc/passwd", "../escape", "a\x00b", "..\\x", "n" * 256]
UNSAFE_APPENDS = ["/", "/../../x", "\x00", "\\", "n" * 256]


@st.composite
def hostile_message(draw, template: list) -> tuple[bytes | None, set[str]]:
    """One message built from a valid chunk's ``template`` fields that the daemon must reject."""
    fields = list(template)
    kind = draw(st.sampled_from(["garbage", "truncated", "count", "type", "path", "hash", "range"]))
    if kind == "garbage":
        return b"\xc1" + draw(st.binary(max_size=300)), {"undecodable"}
    if kind == "truncated":
        value = pack(fields)
        return value[:draw(st.integers(1, len(value) - 1))], {"undecodable"}
    if kind == "count":
        n = draw(st.sampled_from([*range(0, 9), *range(11, 16)]))
        return pack((fields * 2)[:n]), {"bad_shape"}
    if kind == "type":
        i = draw(st.integers(0, 9))
        fields[i] = draw(BAD_VALUES[i])
        return pack(fields), {"bad_field"}
    if kind == "path":
        where = draw(st.sampled_from(["filename", "subdir", "append"]))
        if where == "filename":
            fields[0] = draw(st.sampled_from(UNSAFE_NAMES))
        elif where == "append":
            fields[7] = draw(st.sampled_from(UNSAFE_APPENDS))
        else:
            parts = draw(st.lists(st.sampled_from(["a", "b1", "c.d"]), min_size=1, max_size=3))
            bad = draw(st.sampled_from(UNSAFE_COMPONENTS))
            parts.insert(draw(st.integers(0, len(parts))), bad)
            fields[6] = "/".join(parts)  # with "" inserted: a leading, doubled or trailing slash
        return pack(fields), {"unsafe_path"}
    if kind == "hash":
        if fields[8] and draw(st.booleans()):
            data = bytearray(fields[8])
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
            fields[8] = bytes(data)
        else:
            fields[2] = draw(st.binary(min_size=64, max_size=64).filter(lambda b: b != template[2]))
        return pack(fields), {"chunk_hash_mismatch"}
    # range
    which = draw(st.sampled_from(["n_total", "chunk_i", "offset", "huge_n", "far"]))
    if which == "n_total":
        fields[5] = draw(st.integers(-2**63, 0))
    elif which == "chunk_i":
        fields[4] = draw(st.one_of(st.integers(-2**63, 0), st.integers(fields[5] + 1, 2**64 - 1)))
    elif which == "offset":
        fields[3] = draw(st.integers(-2**63, -1))
    elif which == "huge_n":
        fields[5] = draw(st.integers(MAX_FILE + 1, 2**64 - 1))
    else:
        fields[3] = draw(st.integers(MAX_FILE, 2**64 - 1 - len(fields[8])))
    return pack(fields), {"bad_range", "too_large"}


_examples = itertools.count()


@st.composite
def batches(draw) -> tuple[dict[str, bytes], list[Message], list[set[str] | None], dict[str, bytes]]:
    """Good files, corrupt files (wrong whole-file hash) and hostile messages, interleaved."""
    tag = f"ex{next(_examples)}-{uuid.uuid4().hex[:6]}"
    good = {f"{tag}/good/{_safe_name(draw)}-{i}.bin": draw(st.binary(max_size=40_000))
            for i in range(draw(st.integers(1, 3)))}
    corrupt = {f"{tag}/corrupt/{_safe_name(draw)}.bin": draw(st.binary(min_size=1, max_size=20_000))
               for _ in range(draw(st.integers(0, 1)))}
    tpl_content = draw(st.binary(min_size=1, max_size=3000))
    size = draw(st.integers(1, len(tpl_content)))
    n = -(-len(tpl_content) // size)
    i = draw(st.integers(1, n))
    template = chunk_fields(f"{tag}/hostile/t.bin", tpl_content, (i - 1) * size, size, n, i)
    hostile = draw(st.lists(hostile_message(template), min_size=1, max_size=25))
    items: list[tuple[Message, set[str] | None]] = []
    for rel, data in good.items():
        items += [(m, None) for m in good_chunks(rel, data, 8192)]
    for rel, data in corrupt.items():
        wrong = hashlib.sha512(data + b"!").digest()
        items += [((None, encode_chunk(filename=rel.rpartition("/")[2], file_hash=wrong, data=data, offset=0,
                                       chunk_i=1, n_total_chunks=1, subdir_str=rel.rpartition("/")[0]), 0), None)]
    keys = draw(st.lists(st.one_of(st.none(), st.text(max_size=20)), min_size=len(hostile), max_size=len(hostile)))
    parts = draw(st.lists(st.integers(0, PARTITIONS - 1), min_size=len(hostile), max_size=len(hostile)))
    items += [((k, v, p), reasons) for (v, reasons), k, p in zip(hostile, keys, parts)]
    items = draw(st.permutations(items))
    return good, [m for m, _ in items], [r for _, r in items], corrupt


@pytest.fixture(scope="module")
def shared_daemon(broker, tmp_path_factory) -> Iterator[Daemon]:
    """One daemon for every generated example (starting one costs seconds).

    Chunk hashes are verified at intake, so that every generated message is rejected on arrival (with
    the default, a chunk whose data is right under a wrong chunk_hash is proven by the whole-file sha512
    instead: the table test covers both settings).
    """
    root = tmp_path_factory.mktemp("hostile-prop")
    with running(root, broker.bootstrap, f"prop-{uuid.uuid4().hex[:10]}", "at_intake") as daemon:
        yield daemon
    daemon.assert_contained()


@settings(max_examples=6, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(batch=batches())
def test_generated_hostile_streams_through_the_daemon(shared_daemon: Daemon, batch) -> None:
    good, messages, reasons, corrupt = batch
    daemon = shared_daemon
    before = daemon.status()
    saved_before = daemon.saved()
    where = produce_tracked(daemon.bootstrap, daemon.topic, messages)
    n_hostile = sum(r is not None for r in reasons)
    total_before = sum(before["rejected"].values())
    daemon.wait(lambda: {**saved_before, **good} == daemon.saved(), 30, "the good files saved")
    daemon.wait(lambda: sum(daemon.status()["rejected"].values()) == total_before + n_hostile, 20,
                "every hostile message rejected and counted")
    daemon.wait(lambda: set(corrupt) <= set(daemon.failed()), 20, "corrupt files recorded as failed")
    logged = rejections_logged(daemon.log, daemon.topic)
    for w, allowed in zip(where, reasons):
        if allowed is not None:
            assert logged.get(w) in allowed, (w, logged.get(w), allowed)
    assert not any(rel in daemon.saved() for rel in corrupt)
    assert all(rel.split("/")[1] == "good" for rel, _ in recorded(daemon.record) if rel.startswith("ex"))
    code, report = omsctl_check(daemon.cfg)
    assert code == 0, report
    rss = family_rss(daemon.proc.pid)
    assert rss < RSS_BUDGET, f"daemon and workers use {rss >> 20} MiB"

