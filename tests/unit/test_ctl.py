"""omsctl against a real ControlServer served from a thread with canned replies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import structlog

from omsd import ctl, exitcodes
from omsd.control.server import ControlServer

STATUS_REPLY = {
    "pid": 4242,
    "state": "RUNNING",
    "uptime_s": 3723.4,
    "pipelines": [{"name": "mirror", "topic": "raw_files", "group": "omsd-mirror"}],
    "partitions": [{"group": "omsd-mirror", "topic": "raw_files", "partition": 0,
                    "committed": 10, "watermark": 10, "position": 14, "paused": False}],
    "in_progress": [{"path": "run1/scan.dat", "chunks_received": 3, "chunks_total": 8,
                     "bytes": 1572864, "age_s": 2.5}],
    "staging": {"memory_used": 1048576, "memory_budget": 536870912, "spill_used": 0,
                "files": 1},
    "workers": [{"slot": 0, "pid": 5001, "state": "RUNNING", "current_file": "a.dat",
                 "files_done": 7, "restarts": 1}],
    "totals": {"messages_read": 120, "bytes_read": 2048, "files_completed": 7,
               "files_failed": 1, "messages_produced": 3, "bytes_produced": 99},
    "rejected": {"bad_hash": 2},
    "handover": {"topic": "omsd.handover", "available": True, "skipped_messages": 9},
    "recent_errors": [{"time": "2024-05-01T10:00:00Z", "message": "step s3 failed"}],
}

FAILED_REPLY = {"files": [{"path": "run1/bad.dat", "generation": 2, "pipeline": "mirror",
                           "step": "call", "error": "ValueError: nope\nline two",
                           "attempts": 3}]}


class FakeDaemon:
    """A ControlServer polled from a thread, with replaceable canned handlers."""

    def __init__(self, path: Path) -> None:
        self.requests: list[dict] = []
        self.replies: dict[str, object] = {
            "check": {"healthy": True, "reasons": []},
            "status": STATUS_REPLY,
            "failed": FAILED_REPLY,
            "retry": {"queued": 1},
        }
        self.stop_requested = threading.Event()
        self.on_stop = None
        handlers = {name: self._handler(name) for name in ("check", "status", "failed",
                                                            "retry", "stop")}
        self.server = ControlServer(path, handlers)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _handler(self, name: str):
        def handle(request: dict) -> dict:
            self.requests.append(request)
            if name == "stop":
                return self.on_stop(request)
            reply = self.replies[name]
            if isinstance(reply, Exception):
                raise reply
            return reply
        return handle

    def _loop(self) -> None:
        while not self._done.is_set() and not self.stop_requested.is_set():
            self.server.poll(0.02)
        self.server.close()  # like the daemon: the socket goes away at the end

    def start(self) -> "FakeDaemon":
        self.server.start()
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "omsd.sock"


@pytest.fixture
def daemon(sock: Path):
    with structlog.testing.capture_logs():  # keep the server's log lines off stdout
        fake = FakeDaemon(sock).start()
        yield fake
        fake.close()


def run(sock: Path, *args: str) -> int:
    return ctl.main(["--socket", str(sock), *args])


# -- check -------------------------------------------------------------------------
def test_check_healthy_prints_json_and_exits_0(daemon, sock, capsys):
    assert run(sock, "check") == exitcodes.CHECK_HEALTHY
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "healthy"
    assert report["reasons"] == []
    assert daemon.requests == [{"cmd": "check"}]


def test_check_degraded_exits_1_with_reasons(daemon, sock, capsys):
    daemon.replies["check"] = {"healthy": False, "reasons": ["worker 2 in BACKOFF"],
                               "state": "RUNNING"}
    assert run(sock, "check", "--json") == exitcodes.CHECK_DEGRADED
    report = json.loads(capsys.readouterr().out)
    assert report == {"status": "degraded", "reasons": ["worker 2 in BACKOFF"], "state": "RUNNING"}


def test_check_error_reply_is_degraded(daemon, sock, capsys):
    daemon.replies["check"] = RuntimeError("registry locked")
    assert run(sock, "check") == exitcodes.CHECK_DEGRADED
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "degraded"
    assert "registry locked" in report["reasons"][0]


def test_check_not_running_exits_3_with_json(sock, capsys):
    assert run(sock, "check") == exitcodes.CHECK_NOT_RUNNING
    assert json.loads(capsys.readouterr().out)["status"] == "not running"


def test_check_as_a_real_process(daemon, sock):
    proc = subprocess.run([sys.executable, "-m", "omsd.ctl", "--socket", str(sock), "check"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "healthy"
    proc = subprocess.run([sys.executable, "-m", "omsd.ctl", "--socket",
                           str(sock.with_name("gone.sock")), "check"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3


# -- status, failed, retry ---------------------------------------------------------
def test_status_human_output(daemon, sock, capsys):
    assert run(sock, "status") == 0
    out = capsys.readouterr().out
    assert "pid 4242" in out and "RUNNING" in out and "1h 02m 03s" in out
    for text in ("Pipelines", "raw_files", "omsd-mirror", "Partitions", "run1/scan.dat",
                 "1.6 MB", "Staging: memory 1.0 MB of 536.9 MB", "Workers", "5001",
                 "bad_hash 2", "step s3 failed", "Handover: topic omsd.handover in use; 9 messages skipped"):
        assert text in out, text


def test_status_partitions_have_position_and_lag_and_say_what_they_mean(daemon, sock, capsys):
    daemon.replies["status"] = {"pid": 1, "partitions": [
        {"group": "g", "topic": "t", "partition": 0, "committed": 10, "watermark": 12, "position": 15, "lag": 9,
         "paused": False}]}
    assert run(sock, "status") == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "COMMITTED" in line and "POSITION" in line)
    row = out.splitlines()[out.splitlines().index(header) + 1].split()
    assert row == ["g", "t", "0", "10", "12", "15", "9", "no"]
    assert "COMMITTED: offset committed for the group" in out and "SAFE: lowest offset still needed" in out


def test_watch_rates_from_two_replies() -> None:
    before = {"pid": 1, "uptime_s": 10.0, "totals": {"files_completed": 10, "bytes_completed": 1_000_000,
                                                      "messages_read": 100, "bytes_read": 2_000_000}}
    after = {"pid": 1, "uptime_s": 12.0, "totals": {"files_completed": 30, "bytes_completed": 9_000_000,
                                                     "messages_read": 300, "bytes_read": 10_000_000}}
    rates = ctl.rates_between(before, after)
    assert rates["files_completed"] == 10.0 and rates["bytes_completed"] == 4_000_000
    assert ctl.format_rates(rates).startswith("Rates: 10.0 files/s, 4.0 MB/s done; read 100 messages/s, 4.0 MB/s")
    assert ctl.rates_between(before, {**after, "pid": 2}) is None  # another daemon: no rate
    assert ctl.format_rates(None).startswith("Rates: -")


def _ctrl_c_default() -> None:
    """In the child: SIGINT as a terminal delivers it (a test run in the background inherits it ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_watch_redraws_in_place_on_a_terminal_and_ctrl_c_ends_it(daemon, sock):
    import os
    import pty
    import signal
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "omsd.ctl", "--socket", str(sock), "status", "--watch", "0.2"],
                            stdout=slave, stderr=subprocess.PIPE, text=False, preexec_fn=_ctrl_c_default)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 30
    while output.count(ctl.CLEAR_SCREEN.encode()) < 3 and time.monotonic() < deadline:
        output += os.read(master, 65536)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    os.close(master)
    screens = output.decode().split(ctl.CLEAR_SCREEN)[1:-1]  # the last one may still be being drawn
    assert len(screens) >= 2 and all("Rates:" in screen and "Workers" in screen for screen in screens)


def test_watch_without_a_terminal_prints_one_screen_after_another(daemon, sock):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "omsd.ctl", "--socket", str(sock), "status", "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert ctl.CLEAR_SCREEN not in out and out.count("\n--- ") + out.startswith("--- ") >= 2


def test_status_json_prints_reply(daemon, sock, capsys):
    assert run(sock, "--json", "status") == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, **STATUS_REPLY}


def test_status_tolerates_missing_keys(daemon, sock, capsys):
    daemon.replies["status"] = {"pid": 1, "workers": [{"slot": 0}]}
    assert run(sock, "status") == 0
    out = capsys.readouterr().out
    assert "pid 1" in out and "Workers" in out


def test_status_not_running_exits_3(sock, capsys):
    assert run(sock, "status") == exitcodes.RET_NOT_RUNNING
    assert "not running" in capsys.readouterr().err


def test_error_reply_exits_1_with_message(daemon, sock, capsys):
    daemon.replies["status"] = RuntimeError("state unavailable")
    assert run(sock, "status") == exitcodes.RET_ERROR
    assert "state unavailable" in capsys.readouterr().err


def test_failed_lists_files(daemon, sock, capsys):
    assert run(sock, "failed") == 0
    out = capsys.readouterr().out
    assert "run1/bad.dat" in out and "ValueError: nope line two" in out and "mirror" in out


def test_failed_empty(daemon, sock, capsys):
    daemon.replies["failed"] = {"files": []}
    assert run(sock, "failed") == 0
    assert "no failed files" in capsys.readouterr().out


def test_retry_path_and_all(daemon, sock, capsys):
    assert run(sock, "retry", "run1/bad.dat") == 0
    assert "queued 1 file for retry" in capsys.readouterr().out
    daemon.replies["retry"] = {"queued": 4}
    assert run(sock, "retry", "--all", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "queued": 4}
    assert daemon.requests == [{"cmd": "retry", "path": "run1/bad.dat"},
                               {"cmd": "retry", "all": True}]


def test_usage_errors_exit_2(sock, capsys):
    assert ctl.main(["--socket", str(sock), "retry"]) == exitcodes.RET_USAGE
    assert ctl.main(["--socket", str(sock), "frobnicate"]) == exitcodes.RET_USAGE
    assert ctl.main(["--socket", str(sock), "--config", "x.yaml", "check"]) == 2


# -- stop -----------------------------------------------------------------------------
@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def test_stop_waits_for_process_and_socket_to_go(daemon, sock, sleeper, capsys):
    def on_stop(request: dict) -> dict:
        assert request == {"cmd": "stop", "timeout": 5.0}
        # the "daemon" goes away a little after answering: process first, then the socket
        threading.Timer(0.3, os.kill, (sleeper.pid, signal.SIGTERM)).start()
        threading.Timer(0.6, daemon.stop_requested.set).start()
        return {"pid": sleeper.pid}

    daemon.on_stop = on_stop
    assert run(sock, "stop", "--timeout", "5") == 0
    out = capsys.readouterr().out
    assert "stopped" in out
    assert sleeper.poll() is not None  # really dead, not just reported so
    assert not sock.exists()


def test_stop_reports_still_running(daemon, sock, sleeper, capsys, monkeypatch):
    monkeypatch.setattr(ctl, "STOP_GRACE_S", 0.5)
    daemon.on_stop = lambda request: {"pid": sleeper.pid}
    assert run(sock, "stop", "--timeout", "0", "--json") == exitcodes.RET_USAGE  # not a positive time
    assert run(sock, "stop", "--timeout", "0.01", "--json") == exitcodes.RET_ERROR
    report = json.loads(capsys.readouterr().out)
    assert report["stopped"] is False and report["pid"] == sleeper.pid
    assert sleeper.poll() is None


def test_stop_not_running_exits_3(sock, capsys):
    assert run(sock, "stop") == exitcodes.RET_NOT_RUNNING
    assert "not running" in capsys.readouterr().err


# -- --config -----------------------------------------------------------------------
def test_unreadable_config_exits_78(tmp_path, capsys):
    pytest.importorskip("omsd.config")
    missing = tmp_path / "missing.yaml"
    assert ctl.main(["--config", str(missing), "status"]) == exitcodes.RET_CONFIG
    assert "missing.yaml" in capsys.readouterr().err
    assert ctl.main(["--config", str(missing), "check"]) == exitcodes.RET_CONFIG
    assert json.loads(capsys.readouterr().out)["status"] == "unknown"


def test_config_control_socket_is_used(daemon, sock, tmp_path, capsys):
    pytest.importorskip("omsd.config")
    config = tmp_path / "omsd.yaml"
    config.write_text(
        "broker:\n  bootstrap.servers: 127.0.0.1:9092\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"control_socket: {sock}\n"
        "pipelines:\n  - name: mirror\n    topic: raw_files\n"
        f"    steps:\n      - save: {{dir: {tmp_path / 'out'}}}\n")
    assert ctl.main(["--config", str(config), "check"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "healthy"
