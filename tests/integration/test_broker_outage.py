"""A broker that goes away and comes back: what the daemon logs, and how soon its health follows the facts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from confluent_kafka.admin import AdminClient, NewTopic

from omsd.dev.broker import EmbeddedBroker
from omsd.telemetry.kafkalog import REPORT_AFTER_S
from tests.chunks import REPO, log_events, produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import pipeline, write_config


def check(cfg) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), "check"], capture_output=True,
                          text=True, timeout=30, cwd=REPO)
    return done.returncode, json.loads(done.stdout)


def status(cfg) -> dict:
    done = subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), "status", "--json"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    return json.loads(done.stdout)



def test_outage_is_summarised_and_health_recovers_within_seconds(tmp_path, topic) -> None:
    broker = EmbeddedBroker(data_dir=tmp_path / "broker")
    broker.start()
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline("p", topic, f"save: {{dir: {out}}}"),
                       workers=1, extra=f"handover_topic: h-{topic}\n")
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log)
    try:
        produce_files(broker.bootstrap, topic, {"before.bin": b"b" * 1000})
        wait_for(lambda: tree(out) == {"before.bin": b"b" * 1000}, 60, "the first file", proc, log)
        wait_for(lambda: check(cfg)[0] == 0, 30, "healthy", proc, log)

        broker.stop()
        wait_for(lambda: any("broker unreachable" in r for r in check(cfg)[1]["reasons"]), 30,
                 "check to report the broker unreachable", proc, log)
        wait_for(lambda: any(e.get("event", "").startswith(f"broker {broker.bootstrap} unreachable")
                             for e in log_events(log)), REPORT_AFTER_S + 20, "the summary warning", proc, log)

        broker.start()  # same port, memory only: it comes back empty
        back = time.monotonic()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=4)])[topic].result(10)  # the topic, no message yet
        # Healthy once the group has its partitions again, without waiting for a message.
        wait_for(lambda: check(cfg)[0] == 0, 30, "healthy again after the broker's return", proc, log)
        recovered_s = time.monotonic() - back
        assert any(p["assigned"] for p in status(cfg)["partitions"]), "healthy without partitions"
        # The handover topic was lost with the broker: re-checked at the new assignment, and made again.
        wait_for(lambda: status(cfg)["handover"]["available"], 20, "the handover topic in use again", proc, log)
        assert f"h-{topic}" in admin.list_topics(timeout=10).topics
        produce_files(broker.bootstrap, topic, {"after.bin": b"a" * 1000})
        wait_for(lambda: "after.bin" in tree(out), 60, "a file after the outage", proc, log)
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    lines = log_events(log)
    raw = [e["raw"] for e in lines if "raw" in e]
    assert not raw, raw[:5]  # librdkafka's own %3|...|FAIL| lines never reach stderr
    warnings = [e for e in lines if e.get("event", "").startswith(f"broker {broker.bootstrap} unreachable")]
    assert warnings and warnings[0]["level"] == "warning" and warnings[0]["reason"] == "connection refused"
    assert len(warnings) <= 3  # summarised, not a line per attempt
    assert any(e.get("event", "").startswith(f"broker {broker.bootstrap} reachable again") and e["level"] == "info"
               for e in lines)
    print(f"healthy {recovered_s:.1f} s after the broker's return")
