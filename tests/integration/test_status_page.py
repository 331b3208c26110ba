"""The read-only status page on the metrics port, against a running daemon, with a real HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from omsd.dev.broker import free_port
from tests.chunks import REPO, produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import pipeline, write_config

CHROMIUM = "/usr/bin/chromium"


def request(port: int, method: str, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def test_status_page_and_json_on_the_metrics_port(broker, topic, tmp_path) -> None:
    port = free_port()
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline("mirror", topic, f"save: {{dir: {out}}}"),
                       workers=2, extra=f"metrics: {{port: {port}}}\n")
    files = {f"d/f{i}.bin": bytes([i]) * (2000 + i) for i in range(6)}
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log)
    try:
        produce_files(broker.bootstrap, topic, files)
        wait_for(lambda: out.exists() and tree(out) == files, 60, "files saved", proc, log)

        status, headers, body = request(port, "GET", "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        html = body.decode()
        # Self-contained: no script, style, image or font from anywhere else.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external asset"
        assert "@import" not in html and "url(" not in html

        page = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10).read())
        ctl = json.loads(subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), "status", "--json"],
                                        capture_output=True, text=True, timeout=30, cwd=REPO).stdout)
        ctl.pop("ok")
        assert set(page) == set(ctl)  # the same report as `omsctl status --json`
        assert page["pipelines"] == ctl["pipelines"] == [{"name": "mirror", "topic": topic, "group": "omsd.mirror"}]
        assert page["totals"]["files_completed"] == len(files)
        assert {f["path"] for f in page["recent_files"]} == set(files)
        series = page["history"]["pipelines"]["mirror"]
        assert len(series["files_per_s"]) == 90 and sum(series["files_per_s"]) * page["history"]["bucket_s"] == 6
        assert page["partitions"] and all("lag" in p and "position" in p for p in page["partitions"])
        assert len(page["workers"]) == 2

        for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD"):
            status, headers, _ = request(port, method, "/status.json")
            assert status == 405 and headers.get("Allow") == "GET", method
        assert request(port, "POST", "/metrics")[0] == 405
        assert request(port, "GET", "/nothing")[0] == 404
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'omsd_files_completed_total{pipeline="mirror"} 6.0' in scraped

        if os.access(CHROMIUM, os.X_OK):
            dom, console = render_in_chromium(port, tmp_path / "chromium")
            assert 'data-rendered="1"' in dom, dom[-2000:]  # the script ran to the end of its first refresh
            assert re.search(r'<div id="errors">\s*</div>', dom), dom[-2000:]
            assert "Uncaught" not in console and "CONSOLE" not in console, console[-2000:]
            assert f"<td>mirror</td><td>{topic}</td>" in dom and "<polyline" in dom
            assert "d/f5.bin" in dom
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (Debian's chromium package): the page was checked over HTTP "
                    "but not rendered")


def render_in_chromium(port: int, profile) -> tuple[str, str]:
    """The page's DOM after its scripts ran, and the browser's console log."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=10000", "--dump-dom", f"http://127.0.0.1:{port}/"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr
