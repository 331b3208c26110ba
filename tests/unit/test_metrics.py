"""Prometheus metrics scraped over real HTTP."""

from __future__ import annotations

import urllib.request

import prometheus_client
import pytest

from omsd.telemetry.metrics import Metrics


@pytest.fixture
def metrics():
    m = Metrics()
    yield m
    m.stop_http()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def test_scrape_over_http(metrics):
    port = metrics.start_http(0)
    metrics.file_completed("mirror", 1000)
    metrics.file_completed("mirror", 24)
    metrics.file_failed("mirror")
    metrics.worker_restarted(3)
    metrics.message_rejected("bad_hash", 2)
    metrics.set_consumer_lag("raw_files", 1, 17)
    metrics.set_staging_bytes("memory", 4096)
    metrics.set_staging_bytes("spill", 0)
    metrics.observe_step("mirror", "save", 0.02)
    metrics.observe_step("mirror", "save", 3.0)
    text = _scrape(port)
    for line in (
        'omsd_files_completed_total{pipeline="mirror"} 2.0',
        'omsd_bytes_completed_total{pipeline="mirror"} 1024.0',
        'omsd_files_failed_total{pipeline="mirror"} 1.0',
        'omsd_worker_restarts_total{slot="3"} 1.0',
        'omsd_messages_rejected_total{reason="bad_hash"} 2.0',
        'omsd_consumer_lag{partition="1",topic="raw_files"} 17.0',
        'omsd_staging_bytes{kind="memory"} 4096.0',
        'omsd_staging_bytes{kind="spill"} 0.0',
        'omsd_step_duration_seconds_count{pipeline="mirror",step="save"} 2.0',
        'omsd_step_duration_seconds_bucket{le="0.025",pipeline="mirror",step="save"} 1.0',
    ):
        assert line in text, line
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    assert all(name.startswith("omsd_") for name in names), names


def test_forget_partition_drops_the_series(metrics):
    metrics.set_consumer_lag("t", 0, 5)
    metrics.forget_partition("t", 0)
    metrics.forget_partition("t", 9)  # never set: no error
    assert b"omsd_consumer_lag{" not in metrics.render()


def test_registry_is_private_and_instances_independent():
    first, second = Metrics(), Metrics()  # a shared registry would refuse duplicate names
    first.file_failed("p")
    assert b'omsd_files_failed_total{pipeline="p"} 1.0' in first.render()
    assert b'omsd_files_failed_total{pipeline="p"}' not in second.render()
    assert b"omsd_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_http_can_stop_and_double_start_is_refused(metrics):
    port = metrics.start_http(0)
    with pytest.raises(RuntimeError):
        metrics.start_http(0)
    metrics.stop_http()
    with pytest.raises(OSError):
        _scrape(port)


def test_prometheus_client_is_imported_only_to_render_or_serve() -> None:
    import subprocess
    import sys

    code = ("import sys; import omsd.supervisor; from omsd.telemetry.metrics import Metrics; m = Metrics(); "
            "m.file_completed('p', 1); m.observe_step('p', 'save', 0.01); "
            "assert 'prometheus_client' not in sys.modules, 'imported at start-up'; "
            "assert b'omsd_files_completed_total{pipeline=\"p\"} 1.0' in m.render()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_step_time_lands_in_the_first_bucket_whose_bound_is_not_below_it(metrics):
    for seconds in (0.005, 0.0051, 700.0):
        metrics.observe_step("p", "call", seconds)
    text = metrics.render().decode()
    assert 'omsd_step_duration_seconds_bucket{le="0.005",pipeline="p",step="call"} 1.0' in text
    assert 'omsd_step_duration_seconds_bucket{le="0.01",pipeline="p",step="call"} 2.0' in text
    assert 'omsd_step_duration_seconds_bucket{le="600.0",pipeline="p",step="call"} 2.0' in text
    assert 'omsd_step_duration_seconds_bucket{le="+Inf",pipeline="p",step="call"} 3.0' in text
    assert 'omsd_step_duration_seconds_sum{pipeline="p",step="call"} 700.0101' in text
