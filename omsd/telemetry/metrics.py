"""Prometheus metrics of the daemon, on a private registry.

``Metrics`` always exists and is cheap to update: values are kept in plain dictionaries (a file's
counters cost a few dictionary updates, not prometheus_client's labels and locks), and
prometheus_client is imported only when the metrics are rendered or the HTTP endpoint is started
(``start_http``, when configured), where a collector turns the values into metric families. Every
name starts with ``omsd_``.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from typing import Any

import structlog

from omsd.telemetry.history import History
from omsd.telemetry.statuspage import StatusBoard, status_app

log = structlog.get_logger(__name__)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0)

Labels = tuple[str, ...]

# kind, name, help, label names; in the order of Metrics' attributes of the same names.
FAMILIES: tuple[tuple[str, str, str, Labels], ...] = (
    ("counter", "omsd_files_completed_total", "Files that finished every step of a pipeline.", ("pipeline",)),
    ("counter", "omsd_files_failed_total", "Files marked failed in a pipeline.", ("pipeline",)),
    ("counter", "omsd_bytes_completed_total", "Bytes of files that finished a pipeline.", ("pipeline",)),
    ("counter", "omsd_worker_restarts_total", "Worker processes restarted after dying.", ("slot",)),
    ("counter", "omsd_messages_rejected_total", "Kafka messages rejected, by reason.", ("reason",)),
    ("gauge", "omsd_consumer_lag", "Messages between the committed offset and the end of a partition.",
     ("topic", "partition")),
    ("gauge", "omsd_staging_bytes", "Bytes held in staging, by kind (memory, kept: segments kept for reuse, spill).",
     ("kind",)),
    ("gauge", "omsd_undecryptable_messages", "Encrypted messages kept undecrypted in state_dir/undecryptable.",
     ("group",)),
    ("gauge", "omsd_messages_waiting_for_keys", "Encrypted messages held back while their key is requested.",
     ("group",)),
    ("histogram", "omsd_step_duration_seconds", "Time one pipeline step took for one file.", ("pipeline", "step")),
)


class Family:
    """One metric: its values by label values. ``kind``: counter, gauge or histogram."""

    def __init__(self, kind: str, name: str, documentation: str, labels: Labels) -> None:
        self.kind, self.name, self.documentation, self.labels = kind, name, documentation, labels
        self.values: dict[Labels, Any] = {}  # counter/gauge: a number; histogram: [bucket counts, sum]
        self.created: dict[Labels, float] = {}

    def inc(self, key: Labels, amount: float = 1.0) -> None:
        value = self.values.get(key)
        if value is None:
            self.created[key] = time.time()
            value = 0.0
        self.values[key] = value + amount

    def set(self, key: Labels, value: float) -> None:
        self.values[key] = float(value)

    def remove(self, key: Labels) -> None:
        self.values.pop(key, None)
        self.created.pop(key, None)

    def observe(self, key: Labels, value: float) -> None:
        entry = self.values.get(key)
        if entry is None:
            self.created[key] = time.time()
            entry = self.values[key] = [[0] * (len(STEP_BUCKETS) + 1), 0.0]
        entry[0][bisect.bisect_left(STEP_BUCKETS, value)] += 1  # the first bound >= value: "le"
        entry[1] += value

    def family(self) -> Any:
        """The prometheus_client metric family of the current values (at scrape time)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        values, created = dict(self.values), dict(self.created)  # one copy: the main loop goes on updating
        labels = list(self.labels)
        if self.kind == "gauge":
            out = GaugeMetricFamily(self.name, self.documentation, labels=labels)
            for key, value in values.items():
                out.add_metric(key, value)
            return out
        if self.kind == "counter":
            out = CounterMetricFamily(self.name, self.documentation, labels=labels)
            for key, value in values.items():
                out.add_metric(key, value, created=created.get(key))
            return out
        out = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        bounds = [floatToGoString(b) for b in STEP_BUCKETS] + ["+Inf"]
        for key, (counts, total) in values.items():
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, list(counts)):
                cumulative += count
                buckets.append((bound, cumulative))
            out.add_metric(key, buckets, sum_value=total)
            if key in created:
                out.add_sample(f"{self.name}_created", dict(zip(self.labels, key)), created[key])
        return out


class Metrics:
    """The daemon's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.families = [Family(*definition) for definition in FAMILIES]
        (self.files_completed, self.files_failed, self.bytes_completed, self.worker_restarts,
         self.messages_rejected, self.consumer_lag, self.staging_bytes, self.undecryptable,
         self.waiting_for_keys, self.step_duration) = self.families
        self.history = History()  # the last 15 minutes per pipeline, for the status page
        self._registry: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- updates ---------------------------------------------------------
    def file_completed(self, pipeline: str, n_bytes: int) -> None:
        """Count one file of ``n_bytes`` completed by ``pipeline``."""
        key = (pipeline,)
        self.files_completed.inc(key)
        self.bytes_completed.inc(key, n_bytes)
        self.history.add(pipeline, n_bytes)

    def file_failed(self, pipeline: str) -> None:
        """Count one file failed in ``pipeline``."""
        self.files_failed.inc((pipeline,))
        self.history.add(pipeline, 0, failed=True)

    def worker_restarted(self, slot: int) -> None:
        """Count one restart of the worker in ``slot``."""
        self.worker_restarts.inc((str(slot),))

    def message_rejected(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rejected messages for ``reason``."""
        self.messages_rejected.inc((reason,), n)

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the lag of one partition."""
        self.consumer_lag.set((topic, str(partition)), lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition no longer assigned to us."""
        self.consumer_lag.remove((topic, str(partition)))

    def set_staging_bytes(self, kind: str, n_bytes: int) -> None:
        """Set the bytes held in staging of ``kind`` (``memory``, ``kept`` or ``spill``)."""
        self.staging_bytes.set((kind,), n_bytes)

    def set_decryption(self, group: str, kept: int, waiting: int) -> None:
        """Set the undecryptable messages kept and those waiting for their key, for one consumer group."""
        self.undecryptable.set((group,), kept)
        self.waiting_for_keys.set((group,), waiting)

    def observe_step(self, pipeline: str, step: str, seconds: float) -> None:
        """Record how long one step took for one file."""
        self.step_duration.observe((pipeline, step), seconds)

    # -- exposition ------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        """The metric families, for prometheus_client (this object is the registry's collector)."""
        for family in self.families:
            yield family.family()

    @property
    def registry(self) -> Any:
        """A private prometheus_client registry that reads these metrics (made at first use)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=True)
            self._registry.register(self)
        return self._registry

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        from prometheus_client import exposition

        return exposition.generate_latest(self.registry)

    def start_http(self, port: int, addr: str = "127.0.0.1", status: StatusBoard | None = None) -> int:
        """Serve ``/metrics`` (and, given ``status``, the status page on ``/`` and ``/status.json``) from a
        background thread; returns the bound port."""
        from wsgiref.simple_server import make_server

        from prometheus_client import exposition

        if self._server is not None:
            raise RuntimeError("metrics HTTP server already started")
        app = exposition.make_wsgi_app(self.registry)
        if status is not None:
            app = status_app(app, status)
        self._server = make_server(addr, port, app, exposition.ThreadingWSGIServer, handler_class=_quiet_handler())
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


def _quiet_handler() -> type:
    """A request handler that writes no access log on stderr (the daemon's log is structured JSON)."""
    from wsgiref.simple_server import WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    return QuietHandler
