"""The core daemon end to end: real broker, real worker processes, files saved byte-identical."""

from __future__ import annotations

import os
import random

import pytest

from omsd.staging import Staging
from tests.chunks import produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import write_config


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
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, extra="workers: 2\n")
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
