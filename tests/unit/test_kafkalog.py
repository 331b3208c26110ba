"""librdkafka's logs and errors summarised through structlog (omsd.telemetry.kafkalog), with a fake clock."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from confluent_kafka import KafkaError

from omsd.telemetry.kafkalog import (
    LINES_PER_WINDOW, REPEAT_EVERY_S, REPORT_AFTER_S, WINDOW_S, KafkaLog, connect_failure,
)

REFUSED = ("[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
           "Connection refused (after 0ms in state CONNECT)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kafka_log(clock: Clock) -> KafkaLog:
    return KafkaLog(clock=clock)


@pytest.fixture
def captured():
    with structlog.testing.capture_logs() as logs:
        yield logs


def fail(kafka_log: KafkaLog, text: str = REFUSED) -> None:
    kafka_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", text)


def stats_up(*brokers: str) -> str:
    return json.dumps({"brokers": {f"{b}/1": {"state": "UP", "nodename": b} for b in brokers}})


def test_connect_failures_are_recognised_and_disconnects_are_not() -> None:
    assert connect_failure(REFUSED) == ("127.0.0.1:1", "connection refused")
    assert connect_failure("[thrd:GroupCoordinator]: GroupCoordinator: h:9092: Connect to ipv4#10.0.0.1:9092 "
                           "failed: Connection refused (after 1ms in state CONNECT, 9 identical error(s) "
                           "suppressed)") == ("h:9092", "connection refused")
    assert connect_failure("SSL://broker.lab:9093/bootstrap: Failed to resolve 'broker.lab:9093': Name or "
                           "service not known (after 2ms in state CONNECT)") == ("broker.lab:9093",
                                                                                "host name not resolved")
    assert connect_failure("h:9092/1: Connection setup timed out in state CONNECT (after 30028ms in state "
                           "CONNECT)") == ("h:9092", "connection timed out")
    assert connect_failure("127.0.0.1:9092/111: Disconnected (after 12000ms in state UP)") is None
    assert connect_failure("Consumer group session timed out") is None


def test_one_warning_after_ten_seconds_then_a_slow_repeat_then_one_info(kafka_log, clock, captured) -> None:
    fail(kafka_log)
    assert kafka_log.unreachable_since == clock.now
    for _ in range(201):  # librdkafka retries many times a second
        clock.now += 0.05
        fail(kafka_log)
    assert clock.now - 1000.0 >= REPORT_AFTER_S
    warnings = [e for e in captured if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["broker 127.0.0.1:1 unreachable (connection refused) for 10 s"]
    assert warnings[0]["broker"] == "127.0.0.1:1" and warnings[0]["attempts"] > 100
    clock.now += REPEAT_EVERY_S / 2
    kafka_log.tick()
    assert len([e for e in captured if e["log_level"] == "warning"]) == 1
    clock.now += REPEAT_EVERY_S / 2
    kafka_log.tick()
    assert [e["event"] for e in captured if e["log_level"] == "warning"][1] == \
        "broker 127.0.0.1:1 unreachable (connection refused) for 70 s"
    kafka_log.stats(stats_up("127.0.0.1:1"))
    assert kafka_log.unreachable_since is None
    infos = [e for e in captured if e["log_level"] == "info"]
    assert [e["event"] for e in infos] == ["broker 127.0.0.1:1 reachable again after 70 s"]
    assert not [e for e in captured if e["log_level"] == "error"]  # no raw FAIL line passed through


def test_a_short_outage_stays_quiet(kafka_log, clock, captured) -> None:
    fail(kafka_log)
    clock.now += REPORT_AFTER_S / 2
    fail(kafka_log)
    kafka_log.stats(stats_up("127.0.0.1:1"))
    clock.now += REPORT_AFTER_S
    kafka_log.tick()
    assert [e["log_level"] for e in captured] == ["debug"]  # "reachable again", at debug only


def test_unreachable_while_every_broker_fails_and_cleared_by_an_assignment(kafka_log, clock) -> None:
    fail(kafka_log, REFUSED)
    clock.now += 1
    kafka_log.stats(stats_up("127.0.0.2:2"))  # another broker of the cluster is up
    assert kafka_log.unreachable_since is None
    kafka_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", REFUSED.replace("127.0.0.1:1", "127.0.0.2:2"))
    assert kafka_log.unreachable_since == 1000.0
    kafka_log.connected()
    assert kafka_log.unreachable_since is None


def test_errors_feed_the_summary_and_the_listener(kafka_log) -> None:
    seen = []
    settings = kafka_log.client_settings(polled=True, on_error=seen.append)
    assert settings["logger"] is kafka_log and settings["statistics.interval.ms"] > 0
    quiet = kafka_log.client_settings(polled=False)  # a client polled now and then would queue them
    assert quiet == {"log_level": 0}
    settings["error_cb"](KafkaError(KafkaError._TRANSPORT, REFUSED.split("]: ", 1)[1]))
    settings["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert kafka_log.unreachable_since is not None and len(seen) == 2


def test_refused_needs_every_bootstrap_server_to_refuse_a_few_times(kafka_log) -> None:
    for _ in range(3):
        fail(kafka_log)
    assert kafka_log.refused(["127.0.0.1:1"], 3)
    assert not kafka_log.refused(["127.0.0.1:1"], 4)
    assert not kafka_log.refused(["127.0.0.1:1", "127.0.0.1:2"], 3)  # the second one may still answer
    assert kafka_log.refused(["PLAINTEXT://127.0.0.1:1"], 3)
    assert kafka_log.last_failure() == "127.0.0.1:1: connection refused"


def test_other_lines_keep_their_level_and_are_rate_limited(kafka_log, clock, captured) -> None:
    for i in range(LINES_PER_WINDOW + 7):
        kafka_log.log(logging.WARNING, "%s [%s] %s", "COMMITFAIL", "rdkafka#consumer-1", f"[thrd:main]: fail {i}")
    assert [e["event"] for e in captured] == [f"fail {i}" for i in range(LINES_PER_WINDOW)]
    assert all(e["log_level"] == "warning" and e["facility"] == "COMMITFAIL" for e in captured)
    clock.now += WINDOW_S
    kafka_log.log(logging.WARNING, "%s [%s] %s", "COMMITFAIL", "rdkafka#consumer-1", "again")
    assert captured[-2]["event"].startswith("7 more librdkafka lines like the next one were left out")
    assert captured[-1]["event"] == "again"


def test_a_missing_topic_is_said_once_at_info(kafka_log, captured) -> None:
    err = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART,
                     "Subscribed topic not available: raw_files: Broker: Unknown topic or partition")
    for _ in range(3):
        kafka_log.consumer_error("omsd.mirror", err)
    kafka_log.consumer_error("omsd.mirror", KafkaError(KafkaError._PARTITION_EOF, "eof"))
    assert [(e["log_level"], e["event"]) for e in captured] == [
        ("info", "topic raw_files does not exist yet; waiting for it (it appears when first written to)")]
