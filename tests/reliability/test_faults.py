"""Faults a lab sees: a full or read-only output disk, a full spill disk, a broker outage, S3 errors.

Each test runs the real daemon (`omsd run` in a subprocess) against a real
broker, real worker processes, real filesystems (small tmpfs mounts) and a
real S3 API (moto over HTTP), then breaks one thing and mends it again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from omsd.dev.broker import EmbeddedBroker, free_port
from omsd.control.client import ControlClient
from tests.chunks import REPO, produce_files, start_daemon, stop_daemon, tree, wait_for
from tests.conftest import S3_CREDENTIALS, pipeline, write_config
from tests.reliability.faults_funcs import recorded

RECORD_STEP = "tests.reliability.faults_funcs:record"


# -- helpers -----------------------------------------------------------------------------------------
def omsctl(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    """`omsctl --config CFG ARGS...` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "omsd.ctl", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def check(cfg: Path) -> tuple[int, dict]:
    """`omsctl check`: (exit code, JSON report)."""
    result = omsctl(cfg, "check")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {"raw": result.stdout + result.stderr}
    return result.returncode, report


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (skips the test where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {detail}")
    try:
        yield path
    finally:
        _umount(path)


def remount(path: Path, options: str) -> None:
    _mount("-o", f"remount,{options}", str(path))


def fill(directory: Path) -> Path:
    """Grow one file in ``directory`` until its file system has not a byte left; returns the filler's path.

    Called again, it takes whatever was freed since (a closed SQLite WAL, a removed spill file)."""
    filler = directory / ".filler"
    with open(filler, "ab", buffering=0) as out:
        for size in (1 << 16, 1 << 12, 1):
            block = b"\0" * size
            try:
                while True:
                    out.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def failed_paths(cfg: Path) -> dict[str, dict]:
    """`omsctl failed --json`: path → row."""
    result = omsctl(cfg, "failed", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return {row["path"]: row for row in json.loads(result.stdout)["files"]}


def log_events(log: Path) -> list[dict]:
    """The daemon's JSON log lines (other lines skipped)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


@contextlib.contextmanager
def daemon(cfg: Path, log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """The daemon running for the duration of the block; it must then stop gracefully (exit 0)."""
    proc = start_daemon(["run", "--config", str(cfg)], log, env)
    try:
        wait_for(lambda: (cfg.parent / "state" / "omsd.sock").exists(), 30, "the control socket", proc, log)
        yield proc
    except BaseException:
        with contextlib.suppress(Exception):
            stop_daemon(proc, timeout=20)  # SIGTERM first: it frees its shared memory
        raise
    assert stop_daemon(proc) == 0, log.read_text()[-3000:]


# -- 1. the output directory becomes unwritable, then its disk fills -----------------------------------
def test_unwritable_or_full_output_fails_the_step_and_loses_nothing(broker, topic, tmp_path) -> None:
    out = tmp_path / "out"
    record = tmp_path / "record.tsv"
    with tmpfs(out, "2m"):
        cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline(
            "mirror", topic, f"save: {{dir: {out}}}", f"call: {{function: {RECORD_STEP}}}", retries=0),
            workers=2, extra="retry_failed_after_secs: 0\n")
        rng = random.Random(7)
        read_only = {"ro/a.bin": rng.randbytes(300_000)}
        too_big = {"full/b.bin": rng.randbytes(1_000_000)}
        log = tmp_path / "daemon.log"
        with daemon(cfg, log, {"OMSD_FAULTS_RECORD": str(record)}) as proc:
            # (a) read-only output: the step fails and the file's bytes are kept for a retry.
            remount(out, "ro")
            produce_files(broker.bootstrap, topic, read_only)
            wait_for(lambda: "ro/a.bin" in failed_paths(cfg), 30, "a.bin recorded as failed", proc, log)
            # (b) writable again but full: the same.
            remount(out, "rw")
            filler = fill(out)
            produce_files(broker.bootstrap, topic, too_big)
            wait_for(lambda: "full/b.bin" in failed_paths(cfg), 30, "b.bin recorded as failed", proc, log)

            failed = failed_paths(cfg)
            assert set(failed) == {"ro/a.bin", "full/b.bin"}
            assert all(row["kept"] and row["step"] == "save#0" for row in failed.values()), failed
            kept = sorted(p.read_bytes() for p in (tmp_path / "state" / "failed").iterdir())
            assert kept == sorted([*read_only.values(), *too_big.values()])  # nothing lost
            assert [p.name for p in out.rglob("*") if p.is_file()] == [".filler"]  # no partial or temp file
            assert recorded(record) == []  # the step after save never ran on a file that was not saved
            assert proc.poll() is None

            # Space returns: a retry processes both, once.
            filler.unlink()
            retry = omsctl(cfg, "retry", "--all")
            assert retry.returncode == 0 and "queued 2 files" in retry.stdout, retry.stdout + retry.stderr
            expected = {**read_only, **too_big}
            wait_for(lambda: tree(out) == expected, 30, "both files saved after the retry", proc, log)
            wait_for(lambda: not failed_paths(cfg), 10, "no file left failed", proc, log)
            wait_for(lambda: len(recorded(record)) == 2, 10, "the next step ran", proc, log)
            assert sorted(recorded(record)) == sorted(
                (rel, hashlib.sha512(data).hexdigest()) for rel, data in expected.items())
            assert list((tmp_path / "state" / "failed").iterdir()) == []  # kept bytes dropped once done
            code, report = check(cfg)
            assert code == 0, report


def test_failed_files_are_retried_automatically_after_retry_failed_after_secs(broker, topic, tmp_path) -> None:
    out = tmp_path / "out"
    with tmpfs(out, "2m"):
        cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap,
                           pipeline("mirror", topic, f"save: {{dir: {out}}}", retries=0),
                           workers=1, extra="retry_failed_after_secs: 2\n")
        files = {"late.bin": random.Random(3).randbytes(200_000)}
        log = tmp_path / "daemon.log"
        with daemon(cfg, log) as proc:
            remount(out, "ro")
            produce_files(broker.bootstrap, topic, files)
            wait_for(lambda: "late.bin" in failed_paths(cfg), 30, "late.bin recorded as failed", proc, log)
            remount(out, "rw")
            # retry_failed_after_secs is 2: allow generous slack, well below the 30 s scan period.
            wait_for(lambda: tree(out) == files, 12, "the automatic retry", proc, log)


# -- 2. the spill directory fills ----------------------------------------------------------------------
def test_full_spill_directory_pauses_fetching_and_resumes_with_space(broker, topic, tmp_path) -> None:
    state = tmp_path / "state"
    out = tmp_path / "out"
    with tmpfs(state / "spill", "1m"):
        cfg = write_config(tmp_path / "omsd.yaml", broker.bootstrap, pipeline("mirror", topic, f"save: {{dir: {out}}}"),
                           workers=1, extra="staging: {memory_bytes: 1KiB}\n")
        rng = random.Random(5)
        files = {f"small/s{i}.bin": rng.randbytes(120_000) for i in range(4)}
        files["big.bin"] = rng.randbytes(1_600_000)  # more than the whole spill filesystem
        log = tmp_path / "daemon.log"
        with daemon(cfg, log) as proc:
            produce_files(broker.bootstrap, topic, files, partitions=1)

            def paused_for_staging() -> bool:
                code, report = check(cfg)
                return code == 1 and any("staging" in r for r in report.get("reasons", []))
            wait_for(paused_for_staging, 30, "check to report the full staging disk", proc, log)
            status = ControlClient(state / "omsd.sock").request("status")
            assert any("staging_full" in p["pause_reasons"] for p in status["partitions"]), status["partitions"]
            assert status["totals"]["files_failed"] == 0 and not failed_paths(cfg)
            assert not (out / "big.bin").exists()
            assert proc.poll() is None

            remount(state / "spill", "size=8m")  # space returns
            wait_for(lambda: out.exists() and tree(out) == files, 30, "every file after space returned", proc, log)
            wait_for(lambda: check(cfg)[0] == 0, 15, "healthy again", proc, log)
            status = ControlClient(state / "omsd.sock").request("status")
            assert status["totals"]["files_failed"] == 0
            assert status["staging"]["spill_used"] == 0 and status["staging"]["files"] == 0
            assert list((state / "spill").iterdir()) == []
        assert any(e.get("event") == "staging is full; pausing intake" for e in log_events(log))


# -- 3. the broker goes away and comes back on the same port -------------------------------------------
def test_broker_outage_degrades_then_recovers(tmp_path) -> None:
    port = free_port()
    first = EmbeddedBroker(port=port, data_dir=tmp_path / "broker1")
    first.start()
    before, after = f"before-{uuid.uuid4().hex[:8]}", f"after-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "omsd.yaml", first.bootstrap,
                       pipeline("before", before, f"save: {{dir: {out / 'before'}}}"),
                       pipeline("after", after, f"save: {{dir: {out / 'after'}}}"), workers=1)
    rng = random.Random(9)
    first_files = {f"f{i}.bin": rng.randbytes(40_000) for i in range(3)}
    later_files = {f"g{i}.bin": rng.randbytes(40_000) for i in range(3)}
    log = tmp_path / "daemon.log"
    second: EmbeddedBroker | None = None
    try:
        with daemon(cfg, log) as proc:
            produce_files(first.bootstrap, before, first_files)
            wait_for(lambda: tree(out / "before") == first_files if out.exists() else False, 60,
                     "files before the outage", proc, log)
            assert check(cfg)[0] == 0

            first.stop()

            def degraded() -> bool:
                code, report = check(cfg)
                return code == 1 and any("broker" in r for r in report.get("reasons", []))
            wait_for(degraded, 40, "check to report the broker unreachable", proc, log)
            assert proc.poll() is None  # the daemon stays up through the outage

            second = EmbeddedBroker(port=port, data_dir=tmp_path / "broker2")
            second.start()
            # The embedded broker kept nothing (memory storage: topics, messages and committed offsets are
            # gone), so only files sent after it is back can be read: on a topic first created now, and on
            # the topic the daemon was reading before the outage.
            again_files = {f"h{i}.bin": rng.randbytes(40_000) for i in range(3)}
            produce_files(second.bootstrap, after, later_files)
            produce_files(second.bootstrap, before, again_files)
            wait_for(lambda: (out / "after").exists() and tree(out / "after") == later_files, 45,
                     "files sent after the broker came back", proc, log)
            wait_for(lambda: tree(out / "before") == {**first_files, **again_files}, 30,
                     "files sent after the broker came back, on the topic read before", proc, log)
            wait_for(lambda: check(cfg)[0] == 0, 20, "healthy again", proc, log)
    finally:
        first.stop()
        if second is not None:
            second.stop()


# -- 4. S3 errors are retried --------------------------------------------------------------------------
class MotoServer:
    """moto's S3 server in this process, restartable on the same port (its buckets live on in memory)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server._server.server_close()  # stop() leaves the socket listening: close it for real
            self.server = None


def test_s3_errors_are_retried_until_the_object_is_there(broker, topic, tmp_path) -> None:
    s3 = MotoServer(free_port())
    s3.start()
    client = boto3.client("s3", endpoint_url=s3.url, region_name=S3_CREDENTIALS["region"],
                          aws_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                          aws_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"])
    up_bucket, late_bucket = f"up-{uuid.uuid4().hex[:10]}", f"late-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=up_bucket)
    creds = ", ".join(f"{k}: {v}" for k, v in S3_CREDENTIALS.items())
    cfg = write_config(
        tmp_path / "omsd.yaml", broker.bootstrap,
        pipeline("outage", topic, f"s3: {{bucket: {up_bucket}, prefix: '', endpoint_url: '{s3.url}', {creds}}}",
                 match="'^outage/'", retries=4),
        pipeline("nobucket", topic, f"s3: {{bucket: {late_bucket}, prefix: '', endpoint_url: '{s3.url}', {creds}}}",
                 match="'^nobucket/'", retries=0),
        workers=1, extra="retry_failed_after_secs: 0\n")
    rng = random.Random(13)
    outage = {"outage/a.bin": rng.randbytes(150_000)}
    nobucket = {"nobucket/b.bin": rng.randbytes(150_000)}
    log = tmp_path / "daemon.log"

    def s3_body(bucket: str, key: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    try:
        with daemon(cfg, log) as proc:
            # (a) the endpoint is down during the first attempt and back before the retries run out.
            s3.stop()
            produce_files(broker.bootstrap, topic, outage)

            def retrying() -> bool:
                return any(e.get("event") == "step failed; retrying" and e.get("kind") == "s3"
                           for e in log_events(log))
            wait_for(retrying, 30, "a failed s3 attempt", proc, log)
            s3.start()
            wait_for(lambda: s3_body(up_bucket, "outage/a.bin") == outage["outage/a.bin"], 40,
                     "the object after the endpoint came back", proc, log)
            assert not failed_paths(cfg)

            # (b) the bucket does not exist yet: the file fails, is kept, and a retry puts it there.
            produce_files(broker.bootstrap, topic, nobucket)
            wait_for(lambda: "nobucket/b.bin" in failed_paths(cfg), 30, "b.bin recorded as failed", proc, log)
            client.create_bucket(Bucket=late_bucket)
            retry = omsctl(cfg, "retry", "--all")
            assert retry.returncode == 0 and "queued 1 file" in retry.stdout, retry.stdout + retry.stderr
            wait_for(lambda: s3_body(late_bucket, "nobucket/b.bin") == nobucket["nobucket/b.bin"], 30,
                     "the object after the retry", proc, log)
            wait_for(lambda: not failed_paths(cfg), 10, "no file left failed", proc, log)
            assert check(cfg)[0] == 0
    finally:
        s3.stop()
