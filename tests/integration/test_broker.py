"""`omsd broker` and the embedded broker: start, round trip, clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

from omsd.dev.broker import EmbeddedBroker, free_port
from tests.conftest import client_props


def _round_trip(bootstrap: str) -> list[bytes]:
    topic = f"rt-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(5):
        producer.produce(topic, key=f"k{i}", value=f"v{i}".encode())
    assert producer.flush(10) == 0
    consumer = Consumer({**client_props(bootstrap), "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(got) < 5 and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            got.append(msg.value())
    consumer.close()
    return sorted(got)


def test_embedded_broker_round_trip(broker: EmbeddedBroker) -> None:
    assert _round_trip(broker.bootstrap) == [f"v{i}".encode() for i in range(5)]


def test_omsd_broker_command_serves_and_stops_on_sigterm(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "omsd.cli", "broker", "--port", str(port),
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == f"127.0.0.1:{port}"
        assert _round_trip(line) == [f"v{i}".encode() for i in range(5)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_omsd_broker_port_in_use_is_a_one_line_error() -> None:
    with EmbeddedBroker() as running:
        proc = subprocess.run([sys.executable, "-m", "omsd.cli", "broker", "--port", str(running.port)],
                              capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert "already in use" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
