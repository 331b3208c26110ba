"""Operating the daemon: omsctl, systemd notifications, heartbeats, metrics, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from confluent_kafka import Consumer

from omsd.dev.broker import EmbeddedBroker, free_port
from tests.chunks import REPO, chunk_messages, produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import client_props, pipeline, write_config


def omsctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omsd.ctl", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def test_operating_a_running_daemon(broker, topic, tmp_path) -> None:
    out = tmp_path / "out"
    hb_topic = f"hb-{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline("mirror", topic, f"save: {{dir: {out}}}"),
                       workers=2, extra=f"""heartbeat: {{topic: {hb_topic}, interval_secs: 0.5, program_id: lab1}}
metrics: {{port: {metrics_port}}}
""")
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.1)
    files = {f"d/f{i}.bin": bytes([i]) * (50_000 + i) for i in range(5)}
    n_chunks = sum(len(chunk_messages(rel, data)) for rel, data in files.items())
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log, {"NOTIFY_SOCKET": str(notify_path)})
    received: list[str] = []
    done = threading.Event()

    def read_notify() -> None:
        """Read notifications as systemd would: promptly, so the daemon's datagrams never queue up."""
        while not done.is_set():
            try:
                received.extend(notify.recv(4096).decode().splitlines())
            except (TimeoutError, socket.timeout):
                continue

    reader = threading.Thread(target=read_notify, daemon=True)
    reader.start()

    def drain_notify() -> None:
        return None

    try:
        wait_for(lambda: drain_notify() or "READY=1" in received, 60, "READY=1", proc, log)
        produce_files(broker.bootstrap, topic, files)
        wait_for(lambda: out.exists() and tree(out) == files, 60, "files saved", proc, log)
        wait_for(lambda: drain_notify() or "WATCHDOG=1" in received, 10, "WATCHDOG=1", proc, log)

        check = omsctl("--config", str(cfg), "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert json.loads(check.stdout)["status"] == "healthy"
        status = json.loads(omsctl("--config", str(cfg), "status", "--json").stdout)
        assert status["totals"]["files_completed"] == len(files)
        assert status["totals"]["messages_read"] == n_chunks
        assert len(status["workers"]) == 2 and all(w["state"] == "RUNNING" for w in status["workers"])
        human = omsctl("--config", str(cfg), "status")
        assert human.returncode == 0 and "RUNNING" in human.stdout

        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'omsd_files_completed_total{pipeline="mirror"} 5.0' in scraped
        assert 'omsd_staging_bytes{kind="memory"} 0.0' in scraped
        assert "omsd_step_duration_seconds_count" in scraped
        assert [line for line in scraped.splitlines()
                if line.startswith("omsd_consumer_lag{") and f'topic="{topic}"' in line]

        # Heartbeats: their read counters add up to what was sent.
        consumer = Consumer({**client_props(broker.bootstrap), "group.id": f"hb-{uuid.uuid4().hex[:6]}",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([hb_topic])
        beats: list[dict] = []

        def heartbeats_add_up() -> bool:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    assert msg.key() == b"lab1_heartbeat"
                    beats.append(json.loads(msg.value()))
            return sum(b["n_messages_read"] for b in beats) == n_chunks
        wait_for(heartbeats_add_up, 30, "heartbeats counting every chunk", proc, log)
        consumer.close()
        assert sum(b["n_messages_processed"] for b in beats) == len(files)
        assert all("timestamp" in b for b in beats)

        stop = omsctl("--config", str(cfg), "stop", "--timeout", "30")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert proc.wait(5) == 0
        assert not (tmp_path / "state" / "omsd.sock").exists()
        wait_for(lambda: "STOPPING=1" in received, 5, "STOPPING=1")
    finally:
        stop_daemon(proc)
        done.set()
        reader.join(2)
        notify.close()
    assert omsctl("--config", str(cfg), "check").returncode == 3


def test_check_reports_degraded_when_the_broker_is_unreachable(topic, tmp_path) -> None:
    cfg = write_config(tmp_path / "omsd.yaml", f"127.0.0.1:{free_port()}",
                       pipeline("mirror", topic, f"save: {{dir: {tmp_path / 'out'}}}"), workers=1)
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log)
    try:
        def degraded() -> bool:
            result = omsctl("--config", str(cfg), "check")
            return result.returncode == 1 and "broker" in result.stdout
        wait_for(degraded, 60, "check to report the broker unreachable", proc, log)
    finally:
        assert stop_daemon(proc, signal.SIGINT) == 0


def test_sigint_stops_gracefully_and_nothing_is_lost(broker, topic, tmp_path) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
        "mirror", topic, f"save: {{dir: {out}}}", "call: {function: tests.integration.funcs:slow}"), workers=2)
    files = {f"s/f{i}.bin": bytes([i]) * 10_000 for i in range(6)}
    produce_files(broker.bootstrap, topic, files)
    log = tmp_path / "daemon.log"
    env = {"OMSD_TEST_SLOW": "0.7"}
    proc = start_daemon(["run", "--config", str(cfg)], log, env)
    wait_for(lambda: out.exists() and len(tree(out)) >= 1, 60, "processing under way", proc, log)
    assert stop_daemon(proc, signal.SIGINT) == 0
    proc = start_daemon(["run", "--config", str(cfg)], log, env)
    try:
        wait_for(lambda: tree(out) == files, 60, "all files after the restart", proc, log)
    finally:
        assert stop_daemon(proc) == 0
    time.sleep(0)


def test_warnings_go_to_the_log_topic(broker, topic, tmp_path) -> None:
    from tests.chunks import produce

    log_topic = f"log-{uuid.uuid4().hex[:8]}"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                       pipeline("mirror", topic, f"save: {{dir: {tmp_path / 'out'}}}"), workers=1,
                       extra=f"log: {{topic: {log_topic}, interval_secs: 0.5, program_id: lab1}}\n")
    produce(broker.bootstrap, topic, [("bad", b"\x00 not a chunk", 0)])
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log)
    consumer = Consumer({**client_props(broker.bootstrap), "group.id": f"log-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "topic.metadata.refresh.interval.ms": 1000})
    consumer.subscribe([log_topic])
    lines: list[str] = []
    try:
        def rejection_logged() -> bool:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    assert msg.key() == b"lab1_log"
                    value = json.loads(msg.value())
                    assert isinstance(value["timestamp"], float)
                    lines.extend(value["messages"])
            return any("rejected message" in line for line in lines)
        wait_for(rejection_logged, 30, "the rejection on the log topic", proc, log)
        entry = json.loads(next(line for line in lines if "rejected message" in line))
        assert (entry["topic"], entry["partition"], entry["offset"], entry["reason"]) == (topic, 0, 0, "undecodable")
    finally:
        consumer.close()
        assert stop_daemon(proc) == 0


def test_the_handover_topic_is_opened_once_the_broker_answers(topic, tmp_path) -> None:
    port = free_port()
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "omsd.yaml", f"127.0.0.1:{port}", pipeline("mirror", topic, f"save: {{dir: {out}}}"),
                       workers=1)
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log)  # no broker yet: start-up does not wait for one
    try:
        wait_for(lambda: omsctl("--config", str(cfg), "status").returncode == 0, 30, "the control socket", proc, log)
        status = json.loads(omsctl("--config", str(cfg), "--json", "status").stdout)
        assert status["handover"] == {"topic": "omsd.handover", "available": False, "skipped_messages": 0}
        with EmbeddedBroker(port=port, data_dir=tmp_path / "broker") as late:
            files = {"a/one.bin": b"1" * 70_000, "two.bin": b"2" * 10}
            produce_files(late.bootstrap, topic, files)
            wait_for(lambda: tree(out) == files, 60, "files saved once the broker is up", proc, log)
            status = json.loads(omsctl("--config", str(cfg), "--json", "status").stdout)
            assert status["handover"]["available"] is True
            assert stop_daemon(proc) == 0
    finally:
        stop_daemon(proc)


def test_tools_work_where_the_pipelines_code_is_not_installed(broker, topic, tmp_path) -> None:
    """An instrument PC shares the daemon's config file but not its analysis code: omsctl and omsd upload
    read only broker, producer and socket settings; only `omsd run` imports the step functions."""
    analysis = tmp_path / "analysis" / "omsd_t_lab_analysis"
    analysis.mkdir(parents=True)
    (analysis / "__init__.py").write_text("")
    (analysis / "calc.py").write_text(
        "import os, pathlib\n\n"
        "def analyze(datafile):\n"
        "    pathlib.Path(os.environ['OMSD_T_ANALYZED'], datafile.filename).write_bytes(bytes(datafile.bytestring))\n")
    analyzed = tmp_path / "analyzed"
    analyzed.mkdir()
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                       pipeline("analyze", topic, "call: {function: omsd_t_lab_analysis.calc:analyze}"), workers=1)
    step_line = next(i for i, line in enumerate(cfg.read_text().splitlines(), 1) if "omsd_t_lab_analysis" in line)

    refused = subprocess.run([sys.executable, "-m", "omsd.cli", "run", "--config", str(cfg)], capture_output=True,
                             text=True, cwd=REPO, timeout=60)
    assert refused.returncode == 78, refused.stderr
    assert f"{cfg}:{step_line}:" in refused.stderr and "omsd_t_lab_analysis" in refused.stderr

    paths = [str(tmp_path / "analysis"), *filter(None, [os.environ.get("PYTHONPATH")])]
    log = tmp_path / "daemon.log"
    proc = start_daemon(["run", "--config", str(cfg)], log,
                        {"PYTHONPATH": os.pathsep.join(paths), "OMSD_T_ANALYZED": str(analyzed)})
    try:
        wait_for(lambda: (tmp_path / "state" / "omsd.sock").exists(), 60, "the control socket", proc, log)
        src = tmp_path / "src"
        src.mkdir()
        (src / "scan.dat").write_bytes(b"counts\n" * 5000)
        upload = subprocess.run([sys.executable, "-m", "omsd.cli", "upload", str(src / "scan.dat"), "--config",
                                 str(cfg), "--topic", topic], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert upload.returncode == 0, upload.stderr
        wait_for(lambda: (analyzed / "scan.dat").exists(), 60, "the analysis to run", proc, log)
        assert (analyzed / "scan.dat").read_bytes() == b"counts\n" * 5000
        wait_for(lambda: omsctl("--config", str(cfg), "check").returncode == 0, 30, "a healthy check", proc, log)
        status = omsctl("--config", str(cfg), "--json", "status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pipelines"][0]["name"] == "analyze"
        stop = omsctl("--config", str(cfg), "stop", "--timeout", "30")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert proc.wait(10) == 0
    finally:
        stop_daemon(proc)


def test_download_takes_openmsistreams_heartbeat_options(broker, topic, tmp_path) -> None:
    from tests.integration.test_upload_watch_options import read_raw

    out, hb_topic = tmp_path / "out", f"hb-{uuid.uuid4().hex[:8]}"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap)  # no heartbeat: section
    files = {f"d/f{i}.bin": bytes([i]) * 30_000 for i in range(3)}
    n_chunks = sum(len(chunk_messages(rel, data)) for rel, data in files.items())
    produce_files(broker.bootstrap, topic, files)
    log = tmp_path / "download.log"
    proc = start_daemon(["download", str(out), "--config", str(cfg), "--topic_name", topic,
                         "--heartbeat_topic_name", hb_topic, "--heartbeat_program_id", "dl1",
                         "--heartbeat_interval_secs", "0.5"], log)
    try:
        wait_for(lambda: out.exists() and tree(out) == files, 60, "the files saved", proc, log)
        beats = read_raw(broker.bootstrap, hb_topic, lambda m: sum(v["n_messages_read"] for _, v in m) >= n_chunks)
    finally:
        assert stop_daemon(proc) == 0
    assert beats and {key for key, _ in beats} == {"dl1_heartbeat"}
    assert sum(v["n_messages_read"] for _, v in beats) == n_chunks
