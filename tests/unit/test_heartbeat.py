"""Heartbeat counters and messages, compared with OpenMSIStream's own."""

from __future__ import annotations

import datetime
import json

import pytest

from omsd.telemetry.heartbeat import (
    COUNTER_KEYS, UPLOAD_COUNTER_KEYS, Counters, HeartbeatSchedule, heartbeat_message,
)


def test_counters_count_messages_and_bytes_and_reset():
    counters = Counters()
    counters.add_read(100)
    counters.add_read(50)
    counters.add_processed(150)
    counters.add_produced(7)
    assert counters.snapshot_and_reset() == {
        "n_messages_read": 2, "n_bytes_read": 150,
        "n_messages_processed": 1, "n_bytes_processed": 150,
        "n_messages_produced": 1, "n_bytes_produced": 7,
    }
    assert counters.snapshot_and_reset() == dict.fromkeys(COUNTER_KEYS, 0)


def test_negative_bytes_rejected():
    with pytest.raises(ValueError):
        Counters().add_read(-1)


def test_message_key_and_value():
    now = datetime.datetime(2024, 5, 1, 12, 30, 5, 123456, tzinfo=datetime.timezone.utc)
    counters = {"n_messages_read": 3, "n_bytes_read": 30, "n_messages_processed": 2,
                "n_bytes_processed": 20, "n_messages_produced": 1, "n_bytes_produced": 10}
    key, value = heartbeat_message("omsd-lab1", counters, now=now)
    assert key == "omsd-lab1_heartbeat"
    assert json.loads(value) == {"timestamp": "2024-05-01T12:30:05.123456+00:00", **counters}


def test_naive_and_other_timezones_are_sent_as_utc():
    naive = datetime.datetime(2024, 5, 1, 12, 0, 0)
    _, value = heartbeat_message("p", {}, now=naive)
    assert json.loads(value)["timestamp"] == "2024-05-01T12:00:00+00:00"
    plus2 = datetime.datetime(2024, 5, 1, 14, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    _, value = heartbeat_message("p", {}, now=plus2)
    decoded = json.loads(value)
    assert decoded["timestamp"] == "2024-05-01T12:00:00+00:00"
    assert all(decoded[k] == 0 for k in COUNTER_KEYS)


def test_matches_openmsistream_reproducer_heartbeat():
    producibles = pytest.importorskip("openmsistream.utilities.heartbeat_producibles")
    theirs = producibles.MessageReproducerHeartbeatProducible("lab", 1, 2, 3, 40, 50, 60)
    their_value = theirs.msg_value
    counters = Counters()
    counters.add_read(40)
    counters.add_processed(25)
    counters.add_processed(25)
    for _ in range(3):
        counters.add_produced(20)
    key, value = heartbeat_message("lab", counters.snapshot_and_reset())
    assert key == theirs.msg_key
    ours, their_dict = json.loads(value), json.loads(their_value)
    assert list(ours) == list(their_dict)  # same keys in the same order
    for name in COUNTER_KEYS:
        assert ours[name] == their_dict[name], name
    # same timestamp format: an aware UTC ISO-8601 string
    for stamp in (ours["timestamp"], their_dict["timestamp"]):
        parsed = datetime.datetime.fromisoformat(stamp)
        assert parsed.utcoffset() == datetime.timedelta(0)
        assert stamp.endswith("+00:00")
    # the value is a plain UTF-8 JSON string, as OpenMSIStream's StringSerializer sends it
    assert value.decode("utf-8") == json.dumps(ours)


def test_matches_openmsistream_upload_directory_heartbeat():
    producibles = pytest.importorskip("openmsistream.utilities.heartbeat_producibles")
    theirs = producibles.UploadDirectoryHeartbeatProducible("up", 7, 7000)
    counters = Counters()
    for _ in range(7):
        counters.add_produced(1000)
    key, value = heartbeat_message("up", counters.snapshot_and_reset(), keys=UPLOAD_COUNTER_KEYS)
    ours, their_dict = json.loads(value), json.loads(theirs.msg_value)
    assert key == theirs.msg_key == "up_heartbeat"
    assert list(ours) == list(their_dict) == ["timestamp", "n_messages_produced", "n_bytes_produced"]
    assert (ours["n_messages_produced"], ours["n_bytes_produced"]) == (7, 7000)


def test_schedule_first_due_then_every_interval():
    schedule = HeartbeatSchedule(30)
    assert schedule.due(1000.0)
    assert not schedule.due(1000.0)
    assert not schedule.due(1029.9)
    assert schedule.due(1030.0)
    assert not schedule.due(1031.0)
    assert schedule.due(1100.0)  # late: next one is counted from now, no burst
    assert not schedule.due(1129.0)


def test_schedule_rejects_non_positive_interval():
    with pytest.raises(ValueError):
        HeartbeatSchedule(0)
