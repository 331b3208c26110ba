"""The control socket serves its operator: a crowd of connections cannot keep `check` out, and
requests with bad arguments get error replies instead of being acted on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from omsd.control.client import ControlClient
from tests.chunks import REPO, produce_files, start_daemon, stop_daemon, wait_for
from tests.conftest import pipeline, write_config

FAIL_STEP = "tests.integration.pipeline_funcs:fail_while_flagged"


def omsctl(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def test_check_answers_through_200_idle_connections_and_bad_requests_are_refused(broker, topic, tmp_path) -> None:
    flag, record = tmp_path / "offline", tmp_path / "record.jsonl"
    flag.touch()
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                       pipeline("mirror", topic, f"call: {{function: {FAIL_STEP}}}", retries=0),
                       workers=1, extra="retry_failed_after_secs: 0\n")
    log = tmp_path / "daemon.log"
    sock_path = tmp_path / "state" / "omsd.sock"
    proc = start_daemon(["run", "--config", str(cfg)], log, {"OMSD_TEST_FLAG": str(flag),
                                                             "OMSD_TEST_RECORD": str(record)})
    crowd: list[socket.socket] = []
    try:
        wait_for(lambda: omsctl(cfg, "check").returncode == 0, 60, "the daemon healthy", proc, log)
        produce_files(broker.bootstrap, topic, {"runs/bad.dat": b"x" * 1000})
        wait_for(lambda: "runs/bad.dat" in omsctl(cfg, "failed").stdout, 30, "the failed file", proc, log)

        # 1. A crowd of 200 idle connections (more than the limit of 128) cannot keep `check` out.
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            crowd.append(sock)
            sock.connect(str(sock_path))  # blocking: waits while the listen backlog is full
        time.sleep(0.5)
        started = time.monotonic()
        result = omsctl(cfg, "check")  # omsctl gives up after 5 s without a reply
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["status"] == "healthy"
        assert time.monotonic() - started < 5 + 3  # +3: omsctl's own start-up
        # ... and idle connections are closed after a few seconds, not a minute.
        survivor = crowd[-1]
        survivor.settimeout(15)
        closed_after = time.monotonic()
        assert survivor.recv(10) == b""
        assert time.monotonic() - closed_after < 10

        # 2. Bad arguments get an error reply and change nothing.
        client = ControlClient(sock_path)
        for timeout in ("abc", -1, 0, True, [5], {"s": 1}):
            reply = client.request("stop", timeout=timeout)
            assert reply["ok"] is False and "timeout" in reply["error"], (timeout, reply)
        for bad in ({"path": {"a": 1}}, {"path": "../../etc/passwd"}, {"path": ""}, {"paths": "runs/bad.dat"},
                    {"paths": ["runs/bad.dat", 7]}, {"all": "yes"}, {}, {"path": "runs/bad.dat", "all": True}):
            reply = client.request("retry", **bad)
            assert reply["ok"] is False and reply["error"].startswith("retry"), (bad, reply)
        assert proc.poll() is None and client.request("check")["ok"] is True
        assert "runs/bad.dat" in omsctl(cfg, "failed").stdout  # still failed: nothing was retried
        assert omsctl(cfg, "retry", "runs/nothing.dat").returncode == 1

        # 3. Good requests still work: a retry of the failed file, then a stop with a valid timeout.
        flag.unlink()
        retry = omsctl(cfg, "retry", "runs/bad.dat")
        assert retry.returncode == 0 and "queued 1 file" in retry.stdout, retry.stdout + retry.stderr
        wait_for(lambda: "runs/bad.dat" not in omsctl(cfg, "failed").stdout, 30, "the retried file", proc, log)
        assert client.request("stop", timeout=2.5)["ok"] is True
        assert proc.wait(30) == 0
    finally:
        for sock in crowd:
            sock.close()
        if proc.poll() is None:
            stop_daemon(proc)
