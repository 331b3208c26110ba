"""`omsd upload --watch` with DataFileUploadDirectory's options, against a real broker.

OpenMSIStream's defaults (regex, existing files), its option spellings, the uploader's heartbeats
and log topic, the polling observer, and file names with any characters.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from omsd.dev.broker import EmbeddedBroker
from tests.conftest import client_props, write_config
from tests.integration.test_upload import TopicReader, Watcher, has_files, reassemble, sent_after_restart


def read_raw(bootstrap: str, topic: str, until, timeout: float = 15.0) -> list[tuple[str, dict]]:
    """(key, JSON value) of every message of a telemetry topic, until ``until(messages)`` holds."""
    consumer = Consumer({**client_props(bootstrap), "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    messages: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(messages):
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                messages.append((msg.key().decode(), json.loads(msg.value())))
    finally:
        consumer.close()
    return messages


def test_openmsistream_defaults_options_and_heartbeats(broker: EmbeddedBroker, topic: str, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "existing.dat").write_bytes(b"here before the start\n")
    with open(os.fsencode(watched) + b"/old \xe9.dat", "wb") as fh:  # not UTF-8, present at the first start
        fh.write(b"never recorded")
    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)
    hb_topic = f"hb-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "watch.log"
    # OpenMSIStream's spellings; no --upload-regex and no --upload-existing: OpenMSIStream's defaults.
    watcher = Watcher(watched, config, topic, tmp_path / "state.sqlite", log, "--watchdog_lag_time", "0.4",
                      "--heartbeat_topic_name", hb_topic, "--heartbeat_program_id", "uploader1",
                      "--heartbeat_interval_secs", "0.5")
    reader = TopicReader(broker.bootstrap, topic)
    try:
        files = {"a.dat": os.urandom(40_000), "sub/b.bin": os.urandom(20_000)}
        (watched / "sub").mkdir()
        for rel, data in files.items():
            (watched / rel).write_bytes(data)
        for skipped in ("run.log", "catalog.csv", "sub/x.log"):  # what OpenMSIStream's regex skips
            (watched / skipped).write_bytes(b"not sent")
        reader.read_until(has_files(files), timeout=20)
        # An existing file is sent once it changes, as OpenMSIStream does on a modification.
        (watched / "existing.dat").write_bytes(b"changed after the start\n")
        reader.read_until(has_files({"existing.dat": b"changed after the start\n"}), timeout=20, extra=1.0)
        assert watcher.stop() == 0
    finally:
        watcher.kill()
    reader.read_until(lambda m: False, timeout=1.0)
    reader.close()
    sent = [chunk.relative_path for _, _, chunk in reader.messages]
    assert reassemble(reader.messages) == {**files, "existing.dat": b"changed after the start\n"}
    assert sent.count("existing.dat") == 1  # only the changed content, not the one found at the start

    # Heartbeats: OpenMSIStream's uploader format; their counts add up to the chunk messages on the topic.
    beats = read_raw(broker.bootstrap, hb_topic, lambda m: sum(v["n_messages_produced"] for _, v in m) >= len(sent))
    assert beats and {key for key, _ in beats} == {"uploader1_heartbeat"}
    assert all(set(value) == {"timestamp", "n_messages_produced", "n_bytes_produced"} for _, value in beats)
    assert sum(v["n_messages_produced"] for _, v in beats) == len(sent)
    assert sum(v["n_bytes_produced"] for _, v in beats) == reader.value_bytes  # OpenMSIStream counts len(msg)


def test_any_file_name_never_stops_the_uploader_or_its_state(broker: EmbeddedBroker, topic: str,
                                                              tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    config = write_config(tmp_path / "omsd.yaml", broker.bootstrap)
    log_topic = f"log-{uuid.uuid4().hex[:8]}"
    state, log = tmp_path / "state.sqlite", tmp_path / "watch.log"
    args = ("--upload-regex", ".*", "--use-polling-observer", "--log_topic_name", log_topic,
            "--log_program_id", "up2", "--log_interval_secs", "0.5")
    watcher = Watcher(watched, config, topic, state, log, *args)
    assert "(polling)" in log.read_text()
    reader = TopicReader(broker.bootstrap, topic)
    sendable = {"tab\there.dat": b"t", "new\nline.dat": b"n", "quo\"te's `x` $y.dat": b"q",
                "sp ace/ünï ✓.txt": b"u", "semi;colon,comma|pipe*star?.csv": b"s"}
    try:
        for rel, data in sendable.items():
            (watched / rel).parent.mkdir(parents=True, exist_ok=True)
            (watched / rel).write_bytes(data)
        raw_root = os.fsencode(watched)
        with open(raw_root + b"/caf\xe9 latin1.dat", "wb") as fh:  # not UTF-8: cannot travel
            fh.write(b"l")
        os.mkdir(raw_root + b"/dir\xff")
        with open(raw_root + b"/dir\xff/inside.dat", "wb") as fh:
            fh.write(b"d")
        (watched / "back\\slash.dat").write_bytes(b"b")  # readers refuse it
        reader.read_until(has_files(sendable), timeout=20)
        (watched / "after.dat").write_bytes(b"still running")
        reader.read_until(has_files({"after.dat": b"still running"}), timeout=20, extra=1.0)
        assert watcher.stop() == 0
    finally:
        watcher.kill()
    text = log.read_text()
    assert "Traceback" not in text
    assert reassemble(reader.messages) == {**sendable, "after.dat": b"still running"}
    for shown in ("'caf\\xe9 latin1.dat'", "'dir\\xff/inside.dat'", "back\\slash.dat"):
        assert text.count(f"skipped {shown}") == 1, text
    assert "stopped (3 files skipped: names that cannot travel)" in text

    # The skips reached the log topic too.
    logs = read_raw(broker.bootstrap, log_topic, lambda m: sum(len(v["messages"]) for _, v in m) >= 3)
    assert {key for key, _ in logs} == {"up2_log"}
    lines = [line for _, value in logs for line in value["messages"]]
    assert sum("skipped" in line and "not valid UTF-8" in line for line in lines) == 2

    # The state file holds every sent name: a restart sends nothing again.
    watcher = Watcher(watched, config, topic, state, log, *args)
    # 1.5 s: a polling round and more than the stable time
    assert sent_after_restart(watcher, watched, reader, settle=1.5) == ["marker"]
