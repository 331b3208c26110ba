"""Encrypted topics (KafkaCrypto) against the real OpenMSIStream package, both directions, and undecryptable
messages kept, counted and processed once their keys arrive.

Nodes are provisioned offline for each test (tests/crypto_support.py). OpenMSIStream's
DataFileUploadDirectory is the encrypting peer because it keeps running, and so keeps answering key
requests (its one-shot UploadDataFile exits 1.5 s after sending).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omsd.wire.protocol import ProtocolError, decode_chunk
from tests.chunks import REPO, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import write_config
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
    configs = provision(nodes, ["oms_up", "omsd_down", "reader"], broker.bootstrap)
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
    heartbeats = f"{topic}_hb"
    proc = omsd(["download", str(out), "--config", str(down_ini), "--topic", topic, "--heartbeat_topic_name",
                 heartbeats, "--heartbeat_program_id", "dl", "--heartbeat_interval_secs", "1"], tmp_path, log)
    try:
        write_tree(src, files)
        wait_for(lambda: out.exists() and tree(out) == files, 60, "every encrypted file saved", proc, log)
        assert uploader.poll() is None, (tmp_path / "up.log").read_text()[-2000:]
        # The daemon's own messages follow the encryption: a third node decrypts its heartbeats.
        counted = read_encrypted_heartbeats(broker.bootstrap, heartbeats, configs["reader"], n_messages(files))
        assert counted["key"] == b"dl_heartbeat" and counted["n_messages_read"] >= n_messages(files)
    finally:
        quit_openmsistream(uploader, 20)
        assert stop_daemon(proc) == 0, log.read_text()[-3000:]
    assert_unreadable_on_topic(broker.bootstrap, topic, files, len(files))


def read_encrypted_heartbeats(bootstrap: str, topic: str, reader_config: Path, at_least: int = 1) -> dict:
    """Heartbeats on ``topic``, which must be ciphertext, decrypted by another node: key and summed counts.

    Each heartbeat counts the messages read since the one before, so they are read (for up to 30 s)
    until the counts add up to ``at_least``."""
    from omsd.config import Config
    from omsd.crypto.node import NOT_YET, CryptoNode
    from omsd.crypto.settings import resolve
    from omsd.kafka import admin_config

    node = CryptoNode(resolve({"config_file": str(reader_config)}, reader_config.parent),
                      admin_config(Config(broker={"bootstrap.servers": bootstrap})))
    reader = TopicReader(bootstrap, topic)
    raw: list[tuple[bytes, bytes]] = []
    total: dict = {"n_messages_read": 0}
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and total["n_messages_read"] < at_least:
            msg = reader.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                assert msg.value()[:1] == b"\x01" and b"heartbeat" not in msg.key()  # not readable as sent
                raw.append((msg.key(), msg.value()))
            for key, value in list(raw):
                opened = node.decrypt(topic, key, value)
                if opened is not NOT_YET:
                    raw.remove((key, value))
                    total["key"] = opened[0]
                    total["n_messages_read"] += json.loads(opened[1])["n_messages_read"]
    finally:
        reader.close()
        node.close()
    return total


def tree_has(out: Path, files: dict[str, bytes]) -> bool:
    """Every file saved identical (OpenMSIStream keeps its own logs and registry in its output folder too)."""
    found = tree(out)
    return all(found.get(rel) == data for rel, data in files.items())


def n_messages(files: dict[str, bytes], chunk_size: int = 524288) -> int:
    return sum(max(1, -(-len(data) // chunk_size)) for data in files.values())


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def omsd_yaml(path: Path, bootstrap: str, kafkacrypto: str, state: Path) -> Path:
    return write_config(path, bootstrap, state_dir=state, workers=2, extra=f"kafkacrypto: {kafkacrypto}\n")


def test_openmsistream_downloader_decrypts_omsd_uploads(broker, topic, tmp_path) -> None:
    nodes = tmp_path / "nodes"
    provision(nodes, ["omsd_up", "oms_down"], broker.bootstrap)
    up_cfg = omsd_yaml(nodes / "up.yaml", broker.bootstrap, "{node_id: omsd_up}", tmp_path / "state")
    down_ini = openmsistream_ini(nodes / "down.config", broker.bootstrap, kafkacrypto={"node_id": "oms_down"})
    src, out = tmp_path / "src", tmp_path / "out"
    files = sample_files()
    write_tree(src, files)
    out.mkdir()
    downloader = subprocess.Popen(
        [str(BIN / "DataFileDownloadDirectory"), str(out), "--config", str(down_ini), "--topic_name", topic,
         "--update_seconds", "1"],
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "down.log", "w"))
    upload = subprocess.Popen([sys.executable, "-m", "omsd.cli", "upload", str(src), "--config", str(up_cfg),
                               "--topic", topic, "--key-linger-secs", "60"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: tree_has(out, files), 60, "OpenMSIStream rebuilt every file", downloader,
                 tmp_path / "down.log")
        assert upload.poll() is None  # still lingering for key requests
    finally:
        upload.send_signal(signal.SIGINT)  # ends the linger early
        _, err = upload.communicate(timeout=30)
        downloader.kill()
        downloader.wait(10)
    assert upload.returncode == 0, err
    assert "to answer key requests" in err and "uploaded 4 files" in err
    assert_unreadable_on_topic(broker.bootstrap, topic, files, len(files))


def _keep_undecryptable(broker, topic: str, tmp_path: Path, retry_secs: float) -> tuple[Path, Path, Path, dict]:
    """Files uploaded encrypted by a producer that is gone before the consumer asks for keys: the consumer
    keeps them all, and commits past them."""
    nodes = tmp_path / "nodes"
    provision(nodes, ["omsd_up", "omsd_down"], broker.bootstrap)
    up_cfg = omsd_yaml(nodes / "up.yaml", broker.bootstrap, "{node_id: omsd_up}", tmp_path / "up-state")
    down_cfg = omsd_yaml(nodes / "down.yaml", broker.bootstrap,
                         "{node_id: omsd_down, max_initial_wait_per_decrypt: 2, max_wait_per_decrypt: 1, "
                         f"retry_undecryptable_secs: {retry_secs}}}", tmp_path / "state")
    src, out = tmp_path / "src", tmp_path / "out"
    files = sample_files()
    write_tree(src, files)
    proc = subprocess.run([sys.executable, "-m", "omsd.cli", "upload", str(src), "--config", str(up_cfg), "--topic",
                           topic, "--key-linger-secs", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    log = tmp_path / "daemon.log"
    daemon = start_daemon(["download", str(out), "--config", str(down_cfg), "--topic", topic], log)

    def all_kept_and_committed() -> bool:
        report = status(down_cfg)
        decryption = report.get("decryption") or [{}]
        parts = [p for p in report.get("partitions", []) if p.get("committed") is not None]
        return (decryption[0].get("kept") == n_messages(files) and decryption[0].get("waiting_for_keys") == 0
                and sum(p["committed"] for p in parts) >= n_messages(files)
                and all(p["watermark"] == p["committed"] for p in parts))

    try:
        wait_for(all_kept_and_committed, 30, "every message kept undecrypted and committed past", daemon, log)
        assert not out.exists() or tree(out) == {}
    except BaseException:
        stop_daemon(daemon)
        raise
    return up_cfg, down_cfg, log, {"daemon": daemon, "files": files, "src": src, "out": out}


def _start_key_holder(topic: str, up_cfg: Path, tmp_path: Path) -> subprocess.Popen:
    """The producer node back (a new process: it answers requests for its earlier keys too)."""
    extra = tmp_path / "later"
    write_tree(extra, {"later.txt": b"a later file\n"})
    return subprocess.Popen([sys.executable, "-m", "omsd.cli", "upload", str(extra / "later.txt"), "--config",
                             str(up_cfg), "--topic", topic, "--key-linger-secs", "60"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_undecryptable_messages_are_kept_listed_and_retried(broker, topic, tmp_path) -> None:
    up_cfg, down_cfg, log, run = _keep_undecryptable(broker, topic, tmp_path, retry_secs=3600)
    daemon, files, out = run["daemon"], run["files"], run["out"]
    holder = None
    try:
        listed = omsctl(down_cfg, "failed")
        kept = n_messages(files)
        assert listed.returncode == 0 and f"{kept} undecryptable messages kept" in listed.stdout, listed.stdout
        assert len(list((tmp_path / "state" / "undecryptable").rglob("*.kept"))) == kept
        holder = _start_key_holder(topic, up_cfg, tmp_path)
        time.sleep(3)  # kept messages are not tried again by themselves (retry_undecryptable_secs 3600)
        assert not out.exists() or tree(out).keys() <= {"later.txt"}
        retried = omsctl(down_cfg, "retry", "--undecryptable")
        assert retried.returncode == 0, retried.stderr
        # later.txt (sent under the holder's new key) may have been kept too, if its key came after 2 s
        assert int(retried.stdout.split()[1]) in (kept, kept + 1), retried.stdout
        wait_for(lambda: out.exists() and {k: v for k, v in tree(out).items() if k != "later.txt"} == files, 45,
                 "every kept message decrypted and its file saved", daemon, log)
        wait_for(lambda: (status(down_cfg).get("decryption") or [{}])[0].get("kept") == 0, 10,
                 "kept copies removed once their files are saved", daemon, log)
        assert not list((tmp_path / "state" / "undecryptable").rglob("*.kept"))
    finally:
        if holder is not None:
            holder.send_signal(signal.SIGINT)
            holder.wait(30)
        assert stop_daemon(daemon) == 0, log.read_text()[-3000:]


def test_kept_messages_are_processed_once_their_keys_arrive(broker, topic, tmp_path) -> None:
    up_cfg, down_cfg, log, run = _keep_undecryptable(broker, topic, tmp_path, retry_secs=2)
    daemon, files, out = run["daemon"], run["files"], run["out"]
    holder = _start_key_holder(topic, up_cfg, tmp_path)
    try:
        wait_for(lambda: out.exists() and {k: v for k, v in tree(out).items() if k != "later.txt"} == files, 45,
                 "kept messages decrypted without being asked to", daemon, log)
    finally:
        holder.send_signal(signal.SIGINT)
        holder.wait(30)
        assert stop_daemon(daemon) == 0, log.read_text()[-3000:]


def test_messages_waiting_for_keys_do_not_stop_other_files(broker, topic, tmp_path) -> None:
    """Files whose producer is gone wait for their key (and hold their offsets) while the files of a live
    producer on the same topic and partitions are saved; the consumer stays in its group meanwhile."""
    nodes = tmp_path / "nodes"
    provision(nodes, ["gone_up", "live_up", "omsd_down"], broker.bootstrap)
    gone = omsd_yaml(nodes / "gone.yaml", broker.bootstrap, "{node_id: gone_up}", tmp_path / "s-gone")
    live = omsd_yaml(nodes / "live.yaml", broker.bootstrap, "{node_id: live_up}", tmp_path / "s-live")
    down = omsd_yaml(nodes / "down.yaml", broker.bootstrap,
                     "{node_id: omsd_down, max_initial_wait_per_decrypt: 120}", tmp_path / "state")
    waiting = {f"gone/{i}.bin": os.urandom(1000 + i) for i in range(4)}
    ready = {f"live/{i}.bin": os.urandom(2000 + i) for i in range(4)}
    write_tree(tmp_path / "a", waiting)
    write_tree(tmp_path / "b", ready)
    proc = subprocess.run([sys.executable, "-m", "omsd.cli", "upload", str(tmp_path / "a"), "--config", str(gone),
                           "--topic", topic, "--key-linger-secs", "0", "--partitioner", "default"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out, log = tmp_path / "out", tmp_path / "daemon.log"
    daemon = start_daemon(["download", str(out), "--config", str(down), "--topic", topic], log)
    holder = subprocess.Popen([sys.executable, "-m", "omsd.cli", "upload", str(tmp_path / "b"), "--config",
                               str(live), "--topic", topic, "--key-linger-secs", "60", "--partitioner", "default"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.exists() and tree(out) == ready, 40, "the live producer's files saved", daemon, log)
        report = status(down)
        assert report["decryption"][0]["waiting_for_keys"] == len(waiting)
        assert report["decryption"][0]["kept"] == 0  # still within their wait
        time.sleep(1.5)  # a commit is due every second
        committed = sum(p["committed"] or 0 for p in status(down)["partitions"])
        assert committed <= len(ready)  # the commit has not passed the waiting messages (sent first)
        assert all(p["assigned"] for p in report["partitions"])
        assert not [line for line in log.read_text().splitlines() if "partitions revoked" in line]
    finally:
        holder.send_signal(signal.SIGINT)
        holder.wait(30)
        assert stop_daemon(daemon) == 0, log.read_text()[-3000:]
