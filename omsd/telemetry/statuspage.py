"""The read-only status page on the metrics port: ``GET /`` (one HTML page), ``GET /status.json``.

``/status.json`` is the report ``omsctl status --json`` prints; the page (``status_page.html``, package
data, no external assets) fetches it every few seconds and draws it. ``/metrics`` stays Prometheus's.
Only GET is served (anything else: 405), and nothing here can change the daemon.

The report is built on the supervisor's own thread: the HTTP thread asks through a
:class:`StatusBoard` and the main loop answers it at its next turn (``serve``), so the report never
reads the daemon's state while the loop changes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

ANSWER_WITHIN_S = 3.0  # the main loop turns every 0.1 s; past this the page gets the last report, marked stale

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


class StatusBoard:
    """Hands the status report from the supervisor's thread to the HTTP threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._wanted = 0  # requests waiting for a fresh report
        self._report: dict[str, Any] | None = None
        self._serial = 0

    def get(self, timeout: float = ANSWER_WITHIN_S) -> dict[str, Any] | None:
        """A report made after this call (HTTP thread); the last one, marked ``stale``, if none came in time."""
        with self._cond:
            serial = self._serial
            self._wanted += 1
            try:
                fresh = self._cond.wait_for(lambda: self._serial != serial, timeout)
            finally:
                self._wanted -= 1
            if fresh or self._report is None:
                return self._report
            return {**self._report, "stale": True}

    def serve(self, build: Callable[[], dict[str, Any]]) -> bool:
        """Build and publish a report if a request waits (supervisor thread; cheap when none does)."""
        if not self._wanted:
            return False
        report = build()
        with self._cond:
            self._report = report
            self._serial += 1
            self._cond.notify_all()
        return True


def page_html() -> bytes:
    """The status page (package data)."""
    return resources.files("omsd.telemetry").joinpath("status_page.html").read_bytes()


def status_app(metrics_app: WsgiApp, board: StatusBoard) -> WsgiApp:
    """The WSGI app of the metrics port: ``/`` and ``/status.json`` here, ``/metrics`` to Prometheus."""
    html = page_html()

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if environ.get("REQUEST_METHOD") != "GET":
            return _reply(start_response, "405 Method Not Allowed", b"read-only: only GET\n", "text/plain",
                          [("Allow", "GET")])
        if path in ("/metrics", "/metrics/"):
            return metrics_app(environ, start_response)
        if path in ("/", "/index.html"):
            return _reply(start_response, "200 OK", html, "text/html; charset=utf-8")
        if path == "/status.json":
            report = board.get()
            if report is None:
                return _reply(start_response, "503 Service Unavailable", b'{"error": "no report yet"}\n',
                              "application/json")
            body = json.dumps(report, default=str).encode()
            return _reply(start_response, "200 OK", body, "application/json")
        return _reply(start_response, "404 Not Found", b"not found: try /, /status.json or /metrics\n",
                      "text/plain")

    return app


def _reply(start_response: Callable, status: str, body: bytes, content_type: str,
           headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                            *(headers or [])])
    return [body]
