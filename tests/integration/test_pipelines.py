"""Every pipeline step end to end: real broker, real daemon, real worker processes, real S3 API (moto).

Results that go to Kafka are read back with a plain confluent_kafka Consumer
and compared with what OpenMSIStream would send (its result key, JSON values).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import psutil
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from omsd.dev.broker import free_port
from omsd.control.client import ControlClient, DaemonNotRunning
from omsd.wire.sharding import worker_slot_for
from tests.chunks import REPO, chunk_messages, json_lines, produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import S3_CREDENTIALS, client_props, pipeline, write_config


# -- helpers ---------------------------------------------------------------------------------------
def status(tmp_path: Path) -> dict:
    """The daemon's status, or an empty one while its control socket is not up yet."""
    try:
        return ControlClient(tmp_path / "state" / "omsd.sock").request("status")
    except DaemonNotRunning:
        return {"workers": [], "totals": {}, "staging": {}}


def totals(tmp_path: Path) -> dict:
    return status(tmp_path).get("totals") or {}


def oms_result_key(relative_path: str) -> str:
    """The key OpenMSIStream's reproducers give the result of this file (computed by OpenMSIStream)."""
    from openmsistream.data_file_io.utilities import get_message_prepend

    subdir, _, name = relative_path.rpartition("/")
    return f"{get_message_prepend(subdir, name)}_processing_result"


def consume(bootstrap: str, topics: list[str], n: int, timeout: float = 30) -> list[tuple[str, str, bytes]]:
    """Read ``n`` messages from ``topics`` from the beginning (and a little more, to catch extras)."""
    consumer = Consumer({**client_props(bootstrap), "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         # Tansu may never assign a topic created while the group forms; refresh metadata often
                         "topic.metadata.refresh.interval.ms": 2000})
    consumer.subscribe(topics)
    out: list[tuple[str, str, bytes]] = []
    deadline = time.monotonic() + timeout
    extra_until = None
    try:
        while time.monotonic() < deadline and (extra_until is None or time.monotonic() < extra_until):
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append((msg.topic(), msg.key().decode(), msg.value()))
            if len(out) >= n and extra_until is None:
                extra_until = time.monotonic() + 1.0
    finally:
        consumer.close()
    return out


def create_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    """Create ``topic`` now, so a daemon started before any upload finds it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions)])[topic].result(30)


def run_daemon(tmp_path: Path, cfg: Path, env: dict | None = None):
    log = tmp_path / "daemon.log"
    return start_daemon(["run", "--config", str(cfg)], log, env), log


def omsctl(tmp_path: Path, *args: str) -> dict:
    """`omsctl --socket ... ARGS --json` as a user runs it; returns its JSON output."""
    done = subprocess.run([sys.executable, "-m", "omsd.ctl", "--socket", str(tmp_path / "state" / "omsd.sock"),
                           *args, "--json"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def n_chunks(files: dict[str, bytes]) -> int:
    return sum(len(chunk_messages(rel, data)) for rel, data in files.items())


def sample_files(seed: int, n: int = 3) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"run{i}/sample_{i}.csv": b"".join(b"%d,%f\n" % (j, rng.random()) for j in range(2000 * (i + 1)))
             for i in range(n)}
    files["top_level.txt"] = b"no subdirectory\n"
    return files


# -- result steps ----------------------------------------------------------------------------------
def test_metadata_and_reproduce_results_are_produced(broker, topic, tmp_path) -> None:
    files = sample_files(1)
    meta_topic, repro_topic = f"{topic}-meta", f"{topic}-results"
    out = tmp_path / "saved"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
        "analysis", topic,
        f"metadata: {{function: tests.integration.pipeline_funcs:meta, topic: {meta_topic}}}",
        f"save: {{dir: {out}}}",
        f"reproduce: {{function: tests.integration.pipeline_funcs:summarize_from_disk, topic: {repro_topic}, "
        f"mode: disk}}",
    ), workers=2)
    produce_files(broker.bootstrap, topic, files)
    proc, log = run_daemon(tmp_path, cfg)
    try:
        wait_for(lambda: totals(tmp_path).get("files_completed") == len(files), 60, "files processed", proc, log)
        assert totals(tmp_path)["messages_produced"] == 2 * len(files)
    finally:
        assert stop_daemon(proc) == 0
    got = consume(broker.bootstrap, [meta_topic, repro_topic], 2 * len(files))
    meta = {key: json.loads(value) for t, key, value in got if t == meta_topic}
    results = {key: value.decode() for t, key, value in got if t == repro_topic}
    assert len(got) == 2 * len(files)
    for rel, data in files.items():
        subdir, _, name = rel.rpartition("/")
        sha = hashlib.sha256(data).hexdigest()
        assert meta[oms_result_key(rel)] == {"name": name, "subdir": subdir, "size": len(data), "sha256": sha,
                                             "lines": data.count(b"\n")}
        assert results[oms_result_key(rel)] == f"{rel} {len(data)} {sha}"
    assert tree(out) == files


def test_s3_step_objects_read_back_identical(broker, topic, tmp_path, s3_endpoint) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                      aws_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
                      region_name=S3_CREDENTIALS["region"])
    s3.create_bucket(Bucket=bucket)
    rng = random.Random(2)
    files = {"scan/large.raw": rng.randbytes(6 * 1024 * 1024 + 123), "scan/small.txt": b"small file\n",
             "root.bin": rng.randbytes(1000)}
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline("archive", topic, f"""s3:
  bucket: {bucket}
  endpoint_url: {s3_endpoint}
  region: {S3_CREDENTIALS["region"]}
  aws_access_key_id: ${{TEST_S3_KEY}}
  aws_secret_access_key: ${{TEST_S3_SECRET}}
  multipart_threshold: 5242880
  multipart_chunksize: 5242880"""), workers=2)
    produce_files(broker.bootstrap, topic, files, chunk_size=1 << 20)
    proc, log = run_daemon(tmp_path, cfg, {"TEST_S3_KEY": S3_CREDENTIALS["aws_access_key_id"],
                                           "TEST_S3_SECRET": S3_CREDENTIALS["aws_secret_access_key"]})
    try:
        wait_for(lambda: totals(tmp_path).get("files_completed") == len(files), 60, "files uploaded", proc, log)
    finally:
        assert stop_daemon(proc) == 0
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {f"{topic}/{rel}" for rel in files}
    for rel, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=f"{topic}/{rel}")["Body"].read() == data
    # the large file went up in parts (its ETag says how many)
    assert s3.head_object(Bucket=bucket, Key=f"{topic}/scan/large.raw")["ETag"].strip('"').endswith("-2")


def test_exec_runs_a_program_on_the_saved_file(broker, topic, tmp_path) -> None:
    files = sample_files(3, n=2)
    out, sums = tmp_path / "saved", tmp_path / "sums"
    sums.mkdir()
    script = tmp_path / "convert.sh"
    script.write_text('#!/bin/sh\nset -e\nsha256sum < "$1" | cut -d" " -f1 > "$2/$(basename "$1").sha256"\n')
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
        "convert", topic, f"save: {{dir: {out}}}",
        f'exec: {{argv: [/bin/sh, {script}, "{{path}}", {sums}], timeout: 30}}'), workers=2)
    produce_files(broker.bootstrap, topic, files)
    proc, log = run_daemon(tmp_path, cfg)
    try:
        wait_for(lambda: totals(tmp_path).get("files_completed") == len(files), 60, "files converted", proc, log)
    finally:
        assert stop_daemon(proc) == 0
    assert {p.name: p.read_text().strip() for p in sums.iterdir()} == {
        f"{rel.rpartition('/')[2]}.sha256": hashlib.sha256(data).hexdigest() for rel, data in files.items()}


# -- selecting files, several pipelines ----------------------------------------------------------------
def test_match_regex_filters_files(broker, topic, tmp_path) -> None:
    files = {"a/keep_1.dat": b"1" * 5000, "a/skip_1.txt": b"2" * 5000, "b/c/keep_2.dat": b"3" * 70000,
             "skip_2.dat.bak": b"4"}
    record = tmp_path / "record.jsonl"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
        "dat-only", topic, "call: {function: tests.integration.pipeline_funcs:record}", match=r"'.*\.dat$'"),
        workers=2)
    produce_files(broker.bootstrap, topic, files)
    proc, log = run_daemon(tmp_path, cfg, {"OMSD_TEST_RECORD": str(record)})
    try:
        wait_for(lambda: totals(tmp_path).get("messages_read") == n_chunks(files), 60, "every chunk read", proc, log)
        wait_for(lambda: totals(tmp_path).get("files_completed") == 2, 30, "matching files processed", proc, log)
        state = status(tmp_path)
        assert state["in_progress"] == []  # the others were never staged
        assert state["staging"]["files"] == 0
    finally:
        assert stop_daemon(proc) == 0
    assert sorted(r["path"] for r in json_lines(record)) == ["a/keep_1.dat", "b/c/keep_2.dat"]


def test_two_pipelines_on_one_topic_both_run(broker, topic, tmp_path) -> None:
    files = sample_files(4)
    out, meta_topic = tmp_path / "mirror", f"{topic}-meta"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                       pipeline("mirror", topic, f"save: {{dir: {out}}}"),
                       pipeline("catalogue", topic,
                                f"metadata: {{function: tests.integration.pipeline_funcs:meta, topic: {meta_topic}}}"),
                       workers=2)
    produce_files(broker.bootstrap, topic, files)
    proc, log = run_daemon(tmp_path, cfg)
    try:
        wait_for(lambda: out.exists() and tree(out) == files, 60, "mirror saved", proc, log)
        wait_for(lambda: totals(tmp_path).get("messages_produced") == len(files), 60, "metadata sent", proc, log)
        names = {p["name"]: p["group"] for p in status(tmp_path)["pipelines"]}
        assert names == {"mirror": "omsd.mirror", "catalogue": "omsd.catalogue"}
    finally:
        assert stop_daemon(proc) == 0
    got = consume(broker.bootstrap, [meta_topic], len(files))
    assert sorted(key for _, key, _ in got) == sorted(oms_result_key(rel) for rel in files)


# -- failures and retries -----------------------------------------------------------------------------
def test_failing_step_is_retried_listed_and_retried_by_omsctl(broker, topic, tmp_path) -> None:
    flag, record = tmp_path / "database-offline", tmp_path / "attempts.jsonl"
    flag.touch()
    files = {"runs/r1/spectrum.csv": b"1,2,3\n" * 1000}
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
        "ingest", topic, "call: {function: tests.integration.pipeline_funcs:fail_while_flagged}", retries=2),
        workers=1)
    produce_files(broker.bootstrap, topic, files)
    proc, log = run_daemon(tmp_path, cfg, {"OMSD_TEST_FLAG": str(flag), "OMSD_TEST_RECORD": str(record)})
    try:
        wait_for(lambda: (tmp_path / "state" / "omsd.sock").exists() and omsctl(tmp_path, "failed")["files"],
                 60, "the file listed as failed", proc, log)
        (failed,) = omsctl(tmp_path, "failed")["files"]
        assert failed["path"] == "runs/r1/spectrum.csv" and failed["pipeline"] == "ingest"
        assert failed["attempts"] == 3 and "instrument database offline" in failed["error"]
        assert [r["failed"] for r in json_lines(record)] == [True, True, True]  # 1 try + retries: 2
        assert len(list((tmp_path / "state" / "failed").iterdir())) == 1  # its bytes are kept
        assert proc.poll() is None  # the daemon carries on

        flag.unlink()  # the database is back
        assert omsctl(tmp_path, "retry", "--all")["queued"] == 1
        wait_for(lambda: [r["failed"] for r in json_lines(record)] == [True, True, True, False], 30,
                 "the retry to succeed", proc, log)
        wait_for(lambda: omsctl(tmp_path, "failed")["files"] == [], 30, "the failure to be cleared", proc, log)
        wait_for(lambda: not list((tmp_path / "state" / "failed").iterdir()), 30, "kept bytes removed", proc, log)
    finally:
        assert stop_daemon(proc) == 0


# -- configuration errors ---------------------------------------------------------------------------
BAD_CONFIGS = {
    "missing function": ("      - call: {function: tests.integration.pipeline_funcs:no_such_function}\n",
                         "no_such_function"),
    "missing module": ("      - metadata: {function: no_such_module.sub:extract, topic: m}\n", "no_such_module"),
    "unknown step option": ("      - save: {dir: /tmp/out, colour: red}\n", "colour"),
    "bad regex": ("      - save: {dir: /tmp/out}\n", "bad regex"),
    "unknown pipeline key": ("      - save: {dir: /tmp/out}\n", "unknown pipeline key 'schedule'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_config_errors_exit_78_with_file_and_line_before_kafka(tmp_path, case) -> None:
    step, expected = BAD_CONFIGS[case]
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    lines = ["pipelines:", "  - name: p", "    topic: t"]
    if case == "bad regex":
        lines.append("    match: '([unclosed'")
    if case == "unknown pipeline key":
        lines.append("    schedule: hourly")
    lines += ["    steps:", "      - save: {dir: /tmp/ok}", step.rstrip("\n")]
    cfg = write_config(tmp_path / "bad.yaml", bootstrap, extra="\n".join(lines) + "\n")
    text = cfg.read_text().splitlines()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "omsd.cli", "run", "--config", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode == 78, done.stderr
    assert time.monotonic() - started < 30
    assert expected in done.stderr
    where = re.search(re.escape(str(cfg)) + r":(\d+):", done.stderr)
    assert where, done.stderr
    line = text[int(where.group(1)) - 1]
    culprit = {"bad regex": "match:", "unknown pipeline key": "schedule:"}.get(case)
    if culprit:
        assert line.strip().startswith(culprit)
    else:  # the offending step, or the steps list holding it
        assert line.strip() == step.strip() or line.strip() == "steps:"
    assert not (tmp_path / "state").exists()  # nothing started: no state directory, no lock, no Kafka


# -- many cores ---------------------------------------------------------------------------------------
def two_per_slot(n_slots: int = 2, per_slot: int = 2) -> list[str]:
    """File paths that the daemon's sharding spreads evenly over its worker slots."""
    by_slot: dict[int, list[str]] = {i: [] for i in range(n_slots)}
    i = 0
    while any(len(paths) < per_slot for paths in by_slot.values()):
        path = f"cpu/frame_{i:03d}.tif"
        slot = by_slot[worker_slot_for(path, n_slots)]
        if len(slot) < per_slot:
            slot.append(path)
        i += 1
    return [p for paths in by_slot.values() for p in paths]


def test_cpu_bound_call_runs_on_two_worker_processes_at_once(broker, topic, tmp_path) -> None:
    paths = two_per_slot()
    files = {p: p.encode() * 100 for p in paths}
    record = tmp_path / "cpu.jsonl"
    cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                       pipeline("analyse", topic, "call: {function: tests.integration.pipeline_funcs:spin}"), workers=2)
    create_topic(broker.bootstrap, topic)
    proc, log = run_daemon(tmp_path, cfg, {"OMSD_TEST_RECORD": str(record)})
    try:
        wait_for(lambda: len(status(tmp_path)["workers"]) == 2 and all(
            w["state"] == "RUNNING" for w in status(tmp_path)["workers"]), 60, "workers up", proc, log)
        worker_pids = {w["pid"] for w in status(tmp_path)["workers"]}
        cpu_before = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in worker_pids}
        produce_files(broker.bootstrap, topic, files)
        wait_for(lambda: len(json_lines(record)) == len(files), 90, "every file analysed", proc, log)
        cpu_used = {pid: sum(psutil.Process(pid).cpu_times()[:2]) - cpu_before[pid] for pid in worker_pids}
        assert {w["pid"] for w in status(tmp_path)["workers"]} == worker_pids  # no restarts in between
    finally:
        assert stop_daemon(proc) == 0
    done = json_lines(record)
    by_pid: dict[int, list[dict]] = {}
    for r in done:
        by_pid.setdefault(r["pid"], []).append(r)
    # Both workers analysed files. With balanced dispatch the split need not be 2/2: a worker that finishes
    # first may take a file waiting for the other slot (its path has nothing in flight).
    assert set(by_pid) == worker_pids and sum(len(rs) for rs in by_pid.values()) == len(files)
    work = {pid: sum(r["cpu_s"] for r in rs) for pid, rs in by_pid.items()}
    one_file = min(r["cpu_s"] for r in done)
    for pid in worker_pids:
        assert work[pid] >= one_file > 0.2  # each worker did real CPU work ...
        assert cpu_used[pid] >= work[pid] - 0.05  # ... which the OS accounts to that worker process
    # total CPU of the workers is the work done plus little overhead (no busy-waiting, no duplicated work)
    assert sum(work.values()) - 0.1 <= sum(cpu_used.values()) <= sum(work.values()) * 1.25 + 1.0
    # the two workers were computing at the same time
    (a, b) = by_pid.values()
    assert any(x["start"] < y["end"] and y["start"] < x["end"] for x in a for y in b)
