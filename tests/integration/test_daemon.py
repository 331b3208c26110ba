"""The core daemon end to end: real broker, real worker processes, files saved byte-identical."""

from __future__ import annotations

import os
import random

import pytest

from omsd.intake.staging import Staging
from tests.chunks import produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import pipeline, write_config


@pytest.fixture
def files() -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        "top.bin": rng.randbytes(300_000),
        "sub/dir/nested.dat": rng.randbytes(70_000),
        "sub/ünïcode name.txt": "héllo wörld\n".encode() * 1000,
        "sub/empty.txt": b"",
        "one-chunk.txt": b"small",
    }


def test_download_saves_tree_byte_identical(broker, topic, tmp_path, files) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, workers=2)
    produce_files(broker.bootstrap, topic, files, shuffle=random.Random(1).shuffle)
    log = tmp_path / "daemon.log"
    proc = start_daemon(["download", str(out), "--config", str(cfg), "--topic", topic], log)
    try:
        wait_for(lambda: out.exists() and tree(out) == files, 60, "all files saved", proc, log)
    finally:
        assert stop_daemon(proc) == 0, log.read_text()[-3000:]
    assert not [p for p in (tmp_path / "state" / "spill").iterdir()]
    prefix = Staging(tmp_path / "state", 0).prefix  # this daemon's segments, not other tests'
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(prefix)]


def test_duplicate_chunks_are_idempotent_and_processed_once(broker, topic, tmp_path) -> None:
    """Every chunk sent twice, shuffled (a producer retrying): each file saved once, no partial leftovers."""
    from tests.chunks import chunk_messages, produce
    from tests.integration.funcs import recorded

    out = tmp_path / "out"
    record = tmp_path / "record.txt"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
        "mirror", topic, f"save: {{dir: {out}}}", "call: {function: tests.integration.funcs:record}"), workers=2)
    rng = random.Random(3)
    files = {f"dup/f{i}.bin": rng.randbytes(rng.randint(1, 200_000)) for i in range(5)}
    messages = [(k, v, 0) for rel, data in files.items() for k, v in chunk_messages(rel, data, 20_000)]
    twice = messages + messages
    rng.shuffle(twice)
    produce(broker.bootstrap, topic, twice)
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log, {"OMSD_TEST_RECORD": str(record)})
    try:
        wait_for(lambda: out.exists() and tree(out) == files, 60, "all files saved", proc, log)
        from omsd.control.client import ControlClient

        sock = tmp_path / "state" / "omsd.sock"
        wait_for(lambda: ControlClient(sock).request("status")["totals"]["messages_read"] == len(twice), 30,
                 "every copy read", proc, log)
        status = ControlClient(sock).request("status")
        assert status["in_progress"] == []  # no late duplicate left a partial file holding offsets

        def committed_up_to_the_watermark() -> bool:  # commits follow the watermark at most once a second
            partitions = ControlClient(sock).request("status")["partitions"]
            return all(p["watermark"] == p["committed"] or p["committed"] is None for p in partitions)
        wait_for(committed_up_to_the_watermark, 10, "the commits to reach the watermark", proc, log)
    finally:
        assert stop_daemon(proc) == 0
    assert sorted(recorded(record)) == sorted(files)
