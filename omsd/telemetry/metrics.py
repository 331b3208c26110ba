"""Prometheus metrics of the daemon, on a private registry.

``Metrics`` always exists and is cheap to update; the HTTP endpoint is only
started when configured (``start_http``). Every name starts with ``omsd_``.
"""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition

from omsd.telemetry.history import History
from omsd.telemetry.statuspage import StatusBoard, status_app

log = structlog.get_logger(__name__)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0)


class Metrics:
    """The daemon's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.files_completed = Counter(
            "omsd_files_completed_total", "Files that finished every step of a pipeline.",
            ["pipeline"], registry=reg)
        self.files_failed = Counter(
            "omsd_files_failed_total", "Files marked failed in a pipeline.",
            ["pipeline"], registry=reg)
        self.bytes_completed = Counter(
            "omsd_bytes_completed_total", "Bytes of files that finished a pipeline.",
            ["pipeline"], registry=reg)
        self.worker_restarts = Counter(
            "omsd_worker_restarts_total", "Worker processes restarted after dying.",
            ["slot"], registry=reg)
        self.messages_rejected = Counter(
            "omsd_messages_rejected_total", "Kafka messages rejected, by reason.",
            ["reason"], registry=reg)
        self.consumer_lag = Gauge(
            "omsd_consumer_lag", "Messages between the committed offset and the end of a partition.",
            ["topic", "partition"], registry=reg)
        self.staging_bytes = Gauge(
            "omsd_staging_bytes", "Bytes held in staging, by kind (memory, kept: segments kept for reuse, spill).",
            ["kind"], registry=reg)
        self.undecryptable = Gauge(
            "omsd_undecryptable_messages", "Encrypted messages kept undecrypted in state_dir/undecryptable.",
            ["group"], registry=reg)
        self.waiting_for_keys = Gauge(
            "omsd_messages_waiting_for_keys", "Encrypted messages held back while their key is requested.",
            ["group"], registry=reg)
        self.step_duration = Histogram(
            "omsd_step_duration_seconds", "Time one pipeline step took for one file.",
            ["pipeline", "step"], buckets=STEP_BUCKETS, registry=reg)
        self.history = History()  # the last 15 minutes per pipeline, for the status page
        self._completed: dict[str, tuple[Any, Any]] = {}  # pipeline -> its files and bytes counters
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- updates ---------------------------------------------------------
    def file_completed(self, pipeline: str, n_bytes: int) -> None:
        """Count one file of ``n_bytes`` completed by ``pipeline``."""
        counters = self._completed.get(pipeline)
        if counters is None:  # a labels() lookup per file costs more than the increments
            counters = self._completed[pipeline] = (self.files_completed.labels(pipeline=pipeline),
                                                     self.bytes_completed.labels(pipeline=pipeline))
        counters[0].inc()
        counters[1].inc(n_bytes)
        self.history.add(pipeline, n_bytes)

    def file_failed(self, pipeline: str) -> None:
        """Count one file failed in ``pipeline``."""
        self.files_failed.labels(pipeline=pipeline).inc()
        self.history.add(pipeline, 0, failed=True)

    def worker_restarted(self, slot: int) -> None:
        """Count one restart of the worker in ``slot``."""
        self.worker_restarts.labels(slot=str(slot)).inc()

    def message_rejected(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rejected messages for ``reason``."""
        self.messages_rejected.labels(reason=reason).inc(n)

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the lag of one partition."""
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition no longer assigned to us."""
        try:
            self.consumer_lag.remove(topic, str(partition))
        except KeyError:
            pass

    def set_staging_bytes(self, kind: str, n_bytes: int) -> None:
        """Set the bytes held in staging of ``kind`` (``memory`` or ``spill``)."""
        self.staging_bytes.labels(kind=kind).set(n_bytes)

    def set_decryption(self, group: str, kept: int, waiting: int) -> None:
        """Set the undecryptable messages kept and those waiting for their key, for one consumer group."""
        self.undecryptable.labels(group=group).set(kept)
        self.waiting_for_keys.labels(group=group).set(waiting)

    def observe_step(self, pipeline: str, step: str, seconds: float) -> None:
        """Record how long one step took for one file."""
        self.step_duration.labels(pipeline=pipeline, step=step).observe(seconds)

    # -- exposition ------------------------------------------------------
    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return exposition.generate_latest(self.registry)

    def start_http(self, port: int, addr: str = "127.0.0.1", status: StatusBoard | None = None) -> int:
        """Serve ``/metrics`` (and, given ``status``, the status page on ``/`` and ``/status.json``) from a
        background thread; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("metrics HTTP server already started")
        app = exposition.make_wsgi_app(self.registry)
        if status is not None:
            app = status_app(app, status)
        self._server = make_server(addr, port, app, exposition.ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="omsd-metrics-http", daemon=True)
        self._thread.start()
        bound = int(self._server.server_port)
        log.info("metrics endpoint listening", addr=addr, port=bound,
                 status_page=f"http://{addr}:{bound}/" if status is not None else None)
        return bound

    def stop_http(self) -> None:
        """Stop the HTTP endpoint, if started."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (the daemon's log is structured JSON)."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass
