"""sd_notify over a real AF_UNIX datagram socket, and the unit files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import structlog

from omsd import exitcodes
from omsd.telemetry.systemd import Notifier, watchdog_interval

UNIT_DIR = Path(__file__).resolve().parents[2] / "systemd"


@pytest.fixture
def listener(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()


def _fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


def test_messages_reach_notify_socket(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready("consuming 2 pipelines")
    assert _fields(sock) == {"READY": "1", "STATUS": "consuming 2 pipelines"}
    notifier.status("draining")
    assert _fields(sock) == {"STATUS": "draining"}
    notifier.watchdog()
    assert _fields(sock) == {"WATCHDOG": "1"}
    notifier.stopping()
    assert _fields(sock) == {"STOPPING": "1"}
    notifier.extend_timeout(2.5)
    assert _fields(sock) == {"EXTEND_TIMEOUT_USEC": "2500000"}
    assert notifier.send(errno=5) is True
    assert _fields(sock) == {"ERRNO": "5"}
    notifier.close()


def test_abstract_socket(monkeypatch):
    name = f"omsd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().ready()
        assert _fields(sock) == {"READY": "1"}


def test_unset_notify_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.send(READY=1) is False
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()


def test_send_failure_never_raises_and_logs_once(tmp_path):
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    with structlog.testing.capture_logs() as logs:
        assert notifier.send(READY=1) is False
        notifier.watchdog()
        notifier.status("x")
    assert [e["event"] for e in logs].count("sd_notify failed; further failures not logged") == 1


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_interval() is None


# -- unit files ------------------------------------------------------------------
def test_unit_files_declare_the_contract():
    for name in ("omsd.service", "omsd@.service"):
        text = (UNIT_DIR / name).read_text()
        for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "KillMode=mixed",
                     "TimeoutStopSec=90", "Restart=on-failure",
                     "User=omsd", "Group=omsd", "ProtectSystem=strict",
                     "ReadWritePaths=/srv/omsd", "NoNewPrivileges=yes", "PrivateTmp=yes"):
            assert f"\n{line}\n" in text, (name, line)
        assert "stop --timeout 60" in text
        # Exit codes that a restart cannot mend stop systemd's restart loop.
        (prevent,) = [line for line in text.splitlines() if line.startswith("RestartPreventExitStatus=")]
        assert set(prevent.split("=", 1)[1].split()) == {
            str(exitcodes.RET_CONFIG), str(exitcodes.RET_WORKER_BOOT), str(exitcodes.RET_REGISTRY_DAMAGED)}, name
    assert "/etc/omsd/%i.yaml" in (UNIT_DIR / "omsd@.service").read_text()
    assert "StateDirectory=omsd/%i" in (UNIT_DIR / "omsd@.service").read_text()


@pytest.mark.parametrize("unit,as_name", [("omsd.service", "omsd.service"),
                                          ("omsd@.service", "omsd@lab1.service")])
def test_systemd_analyze_verify(tmp_path, unit, as_name):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    target = tmp_path / as_name
    shutil.copy(UNIT_DIR / unit, target)
    proc = subprocess.run([tool, "verify", str(target)], capture_output=True, text=True,
                          timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if as_name in line or str(target) in line]
    environmental = ("is not executable", "user", "group", "No such file")
    if complaints and all(any(w in c for w in environmental) for c in complaints):
        pytest.skip(f"systemd-analyze only misses parts of this machine: {complaints}")
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr
