"""Encrypted topics (KafkaCrypto) against the real OpenMSIStream package, both directions, and undecryptable
messages kept, counted and processed once their keys arrive.

Nodes are provisioned offline for each test (tests/crypto_support.py). OpenMSIStream's
DataFileUploadDirectory is the encrypting peer because it keeps running, and so keeps answering key
requests (its one-shot UploadDataFile exits 1.5 s after sending).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omsd.wire.protocol import ProtocolError, decode_chunk
from tests.chunks import REPO, stop_daemon, tree, wait_for
from tests.crypto_support import provision
from tests.integration.test_upload import TopicReader
from tests.openmsistream_support import openmsistream_ini, quit_openmsistream

pytest.importorskip("openmsistream")

BIN = Path(sys.executable).parent
PRODUCER = {"batch.size": 2000000, "linger.ms": 100, "key.serializer": "StringSerializer",
            "value.serializer": "DataFileChunkSerializer"}


def sample_files(n: int = 4) -> dict[str, bytes]:
    files = {f"run{i}/data {i}.bin": os.urandom(300_000 * i + 1000) for i in range(1, n)}
    files["top.txt"] = b"plain text that must not be readable on the topic\n" * 100
    return files


def omsd(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`omsd ARGS` in ``cwd`` (an INI config's state_dir is ./var), its output in ``log``."""
    return subprocess.Popen([sys.executable, "-m", "omsd.cli", *args], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, cwd=cwd)


def omsctl(cfg: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


def status(cfg: Path, cwd: Path = REPO) -> dict:
    proc = omsctl(cfg, "status", "--json", cwd=cwd)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def assert_unreadable_on_topic(bootstrap: str, topic: str, files: dict[str, bytes], count: int) -> None:
    """The chunk values on the topic are KafkaCrypto ciphertext: no chunk decodes, no file bytes show."""
    reader = TopicReader(bootstrap, topic)
    raw: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 20
    while len(raw) < count and time.monotonic() < deadline:
        msg = reader.consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            raw.append((msg.key() or b"", msg.value() or b""))
    reader.close()
    assert len(raw) >= count
    sample = files["top.txt"][:40]
    for key, value in raw:
        assert value[:1] == b"\x01"  # KafkaCrypto's format marker
        assert b"_chunk_" not in key and sample not in value
        with pytest.raises(ProtocolError):
            decode_chunk(value)


def test_omsd_download_decrypts_openmsistream_uploads(broker, topic, tmp_path) -> None:
    nodes = tmp_path / "nodes"
    provision(nodes, ["oms_up", "omsd_down"], broker.bootstrap)
    up_ini = openmsistream_ini(nodes / "up.config", broker.bootstrap, producer=PRODUCER,
                               kafkacrypto={"node_id": "oms_up"})
    down_ini = openmsistream_ini(nodes / "down.config", broker.bootstrap, kafkacrypto={"node_id": "omsd_down"})
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    files = sample_files()
    uploader = subprocess.Popen(
        [str(BIN / "DataFileUploadDirectory"), str(src), "--config", str(up_ini), "--topic_name", topic,
         "--upload_existing", "--watchdog_lag_time", "1"],
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "up.log", "w"))
    log = tmp_path / "daemon.log"
    proc = omsd(["download", str(out), "--config", str(down_ini), "--topic", topic], tmp_path, log)
    try:
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        wait_for(lambda: out.exists() and tree(out) == files, 60, "every encrypted file saved", proc, log)
        assert uploader.poll() is None, (tmp_path / "up.log").read_text()[-2000:]
    finally:
        quit_openmsistream(uploader, 20)
        assert stop_daemon(proc) == 0, log.read_text()[-3000:]
    assert_unreadable_on_topic(broker.bootstrap, topic, files, len(files))
