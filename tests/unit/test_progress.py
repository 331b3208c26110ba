"""The daemon's progress line (omsd.telemetry.progress) and the units omsd shows (omsd.telemetry.units)."""

from __future__ import annotations

import structlog

from omsd.telemetry.progress import ProgressLog
from omsd.telemetry.units import human_bytes, human_rate


def test_one_line_per_interval_while_work_flows_and_none_when_idle() -> None:
    now = [0.0]
    progress = ProgressLog(10.0, clock=lambda: now[0])
    totals = {"files_completed": 0, "bytes_completed": 0, "files_failed": 0, "messages_read": 0}
    asked = []

    def lag() -> int:
        asked.append(1)
        return 7

    with structlog.testing.capture_logs() as logs:
        totals.update(files_completed=120, bytes_completed=45_200_000, messages_read=200)
        now[0] = 5.0
        assert not progress.tick(totals, lag)  # the interval is not over
        now[0] = 10.0
        assert progress.tick(totals, lag)
        now[0] = 20.0
        assert not progress.tick(totals, lag)  # nothing moved: no line
        totals.update(files_failed=2, messages_read=210)
        now[0] = 30.0
        assert progress.tick(totals, lag)
    assert [e["event"] for e in logs] == [
        "progress: 120 files (45.2 MB) done in the last 10 s, 0 failed; 120 files done in all; lag 7 messages",
        "progress: 0 files (0 B) done in the last 10 s, 2 failed; 120 files done in all; lag 7 messages"]
    assert logs[0]["files"] == 120 and logs[0]["bytes"] == 45_200_000 and logs[0]["mb_per_s"] == 4.52
    assert len(asked) == 2  # the lag is asked only for a line
    assert not ProgressLog(0).tick(totals, lag)  # 0 turns it off


def test_sizes_are_decimal_everywhere() -> None:
    assert [human_bytes(n) for n in (0, 999, 1536, 2_500_000, 512 << 20, 3 * 10**12)] == [
        "0 B", "999 B", "1.5 kB", "2.5 MB", "536.9 MB", "3.0 TB"]
    assert human_bytes(None) == "-" and human_rate(93_100_000) == "93.1 MB/s"
