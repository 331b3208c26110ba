"""OpenMSIStream-style subclasses run on omsd and, with only their import lines changed, on OpenMSIStream.

Each example in ``compat_examples`` is written as OpenMSIStream's documentation
shows. It runs as ``python -m tests.integration.compat_examples.<name>``
against the real broker, is stopped with SIGTERM (exit 0), and its outputs are
compared with those of the same code run by the real ``openmsistream``
package on the same topic.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from omsd.dev.broker import free_port
from omsd.control.client import ControlClient, DaemonNotRunning
from tests.chunks import REPO, produce_files, tree, wait_for
from tests.conftest import S3_CREDENTIALS
from tests.integration.test_pipelines import consume, create_topic, oms_result_key
from tests.openmsistream_support import openmsistream_ini, quit_openmsistream
from workers import compat

pytest.importorskip("openmsistream")

EXAMPLES = REPO / "tests" / "integration" / "compat_examples"
OMS_NAMES = {"ReproducerMessage": "openmsistream.data_file_io"}


# -- helpers ---------------------------------------------------------------------------------------
def write_ini(path: Path, bootstrap: str, *, s3: bool = False) -> Path:
    """An OpenMSIStream INI config file, read by both programs."""
    sections = {"s3": {"access_key_id": "$ACCESS_KEY_ID", "secret_key_id": "$SECRET_KEY_ID",
                       "endpoint_url": "$ENDPOINT_URL", "region": "$REGION"}} if s3 else {}
    return openmsistream_ini(path, bootstrap, **sections,
                             producer={"key.serializer": "StringSerializer", "value.serializer": "StringSerializer"})


def openmsistream_copy(example: str, directory: Path) -> Path:
    """The example with its ``workers.compat`` import replaced by the OpenMSIStream one(s)."""
    text = (EXAMPLES / f"{example}.py").read_text()
    match = re.search(r"^from workers\.compat import (.+)$", text, re.MULTILINE)
    assert match, example
    names = [n.strip() for n in match.group(1).split(",")]
    imports = "\n".join(f"from {OMS_NAMES.get(name, 'openmsistream')} import {name}" for name in names)
    path = directory / f"oms_{example}.py"
    path.write_text(text[:match.start()] + imports + text[match.end():])
    return path


class Program:
    """A running example program with its log."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None, cwd: Path = REPO) -> None:
        self.log = log
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     cwd=cwd, env={**os.environ, **(env or {})})

    def wait_for(self, predicate, what: str, timeout: float = 90) -> None:
        wait_for(predicate, timeout, what, self.proc, self.log)

    def sigterm(self) -> int:
        """Stop the omsd-backed program the way systemd does."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def quit(self) -> None:
        """Stop an OpenMSIStream program: it reads "q" on stdin."""
        quit_openmsistream(self.proc)


def stop_both(ours: Program, theirs: Program) -> None:
    """SIGTERM the omsd program (it must exit 0) and quit the OpenMSIStream one, whatever happens."""
    try:
        code = ours.sigterm()
    finally:
        theirs.quit()
    assert code == 0, ours.log.read_text()[-3000:]


def feed_reproducers(bootstrap: str, topic: str, tmp_path: Path, files: dict[str, bytes]) -> Path:
    """Produce ``files`` to ``topic`` and create the two programs' result topics (``{topic}-omsd``,
    ``{topic}-oms``); the INI config both programs read."""
    ini = write_ini(tmp_path / "lab.config", bootstrap)
    produce_files(bootstrap, topic, files)
    for suffix in ("omsd", "oms"):
        create_topic(bootstrap, f"{topic}-{suffix}")
    return ini


def same_results(bootstrap: str, topic: str, ours: Program, theirs: Program, n: int) -> dict[str, dict]:
    """Read the ``n`` results each program sent (to ``{topic}-omsd`` / ``{topic}-oms``), stop both, and check
    they are the same; omsd's, by key."""
    try:
        got_ours = consume(bootstrap, [f"{topic}-omsd"], n, timeout=90)
        got_theirs = consume(bootstrap, [f"{topic}-oms"], n, timeout=90)
    finally:
        stop_both(ours, theirs)
    ours_by_key = {key: json.loads(value) for _, key, value in got_ours}
    assert len(got_ours) == n
    assert ours_by_key == {key: json.loads(value) for _, key, value in got_theirs}, theirs.log.read_text()[-3000:]
    return ours_by_key


def omsd_example(example: str, args: list[str], log: Path, env: dict | None = None) -> Program:
    return Program([sys.executable, "-m", f"tests.integration.compat_examples.{example}", *args], log, env)


def failed_files(output_dir: Path) -> list[dict]:
    try:
        return ControlClient(output_dir / "LOGS" / "omsd.sock").request("failed")["files"]
    except DaemonNotRunning:
        return []


def csv_files(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)

    def csv(n: int) -> bytes:
        return b"angle,counts\n" + b"".join(b"%.3f,%d\n" % (rng.uniform(10, 80), rng.randint(0, 9999))
                                           for _ in range(n))

    return {"xrd/run1/scan_a.csv": csv(500), "xrd/run2/scan_b.csv": csv(2000), "scan_top.csv": csv(10)}


def lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines()) if path.exists() else []


# -- the step's contract, in process (no broker) -----------------------------------------------------
class ContractReproducer(compat.DataFileStreamReproducer):
    """Returns what its file name asks for."""

    def _get_processing_result_message_for_file(self, datafile, lock):
        assert lock is compat.PROCESS_LOCK
        kind = datafile.filename.split("_")[0]
        return {"none": None, "exc": ValueError("bad reading"), "dict": {"n": datafile.size},
                "weird": {"when": object()}, "str": "text é", "bytes": datafile.bytestring[::-1]}[kind]


class ContractProcessor(compat.DataFileStreamProcessor):
    def _process_downloaded_data_file(self, datafile, lock):
        return None if datafile.filename.startswith("ok") else OSError("disk full")


def run_step(tmp_path: Path, cls: type, filename: str, **options):
    from workers.datafile import DataFile
    from workers.steps import build_step
    from workers.steps.base import StepContext

    data = b"line 1\nline 2\n"
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    datafile = DataFile(staged_path=str(staged), size=len(data), subdir_str="a/b", filename=filename,
                        file_hash=hashlib.sha512(data).digest(), file_mtime=None, topic="raw")
    step = build_step("openmsistream", {"class": f"{__name__}:{cls.__name__}", "kwargs": {
        "output_dir": str(tmp_path / "out")}, **options}, pipeline="p", topic="raw")
    return step.run(StepContext(datafile=datafile, pipeline="p", topic="raw"))


@pytest.mark.parametrize("filename,expected", [
    ("dict_1.csv", b'{"n": 14}'), ("str_1.csv", "text é".encode()), ("bytes_1.csv", b"line 1\nline 2\n"[::-1])])
def test_reproducer_results_become_messages(tmp_path, filename, expected) -> None:
    (message,) = run_step(tmp_path, ContractReproducer, filename, topic="results")
    assert (message.topic, message.key, message.value) == ("results", oms_result_key(f"a/b/{filename}"), expected)


@pytest.mark.parametrize("filename,error", [("none_1.csv", "returned None: no processing result"),
                                            ("exc_1.csv", "bad reading"), ("weird_1.csv", "not JSON-serialisable")])
def test_reproducer_failures_raise(tmp_path, filename, error) -> None:
    with pytest.raises(Exception, match=error):
        run_step(tmp_path, ContractReproducer, filename, topic="results")


def test_processor_returned_exception_is_a_failure(tmp_path) -> None:
    assert run_step(tmp_path, ContractProcessor, "ok.csv") == []
    with pytest.raises(Exception, match="disk full"):
        run_step(tmp_path, ContractProcessor, "broken.csv")


# -- arguments and configuration (no broker) --------------------------------------------------------
@pytest.mark.parametrize("name", ["DataFileStreamProcessor", "DataFileStreamReproducer", "MetadataJSONReproducer",
                                  "S3TransferStreamProcessor"])
def test_same_command_line_arguments_as_openmsistream(name, tmp_path) -> None:
    import openmsistream

    ini = write_ini(tmp_path / "lab.config", "127.0.0.1:9")
    common = ["--config", str(ini), "--topic_name", "raw", "--consumer_group_id", "g1", "--download_regex", r".*\.csv",
              "--update_seconds", "5", "--heartbeat_topic_name", "hb", "--heartbeat_program_id", "lab1",
              "--heartbeat_interval_secs", "10", "--mode", "both", "--output_dir", str(tmp_path / "out")]
    extra = {"DataFileStreamProcessor": ["--n_threads", "3"], "S3TransferStreamProcessor": ["bkt", "--n_threads", "3"],
             "DataFileStreamReproducer": ["--n_consumer_threads", "3", "--producer_topic_name", "res"],
             "MetadataJSONReproducer": ["--n_consumer_threads", "3", "--producer_topic_name", "res"]}[name]
    ours = vars(getattr(compat, name).get_argument_parser().parse_args(common + extra))
    theirs = vars(getattr(openmsistream, name).get_argument_parser().parse_args(common + extra))
    oms_names = set(getattr(openmsistream, name).get_command_line_arguments()[0]) - {"optional_output_dir"}
    assert oms_names | {"output_dir"} <= set(ours)
    for key in ("topic_name", "consumer_topic_name", "producer_topic_name", "consumer_group_id", "update_seconds",
                "heartbeat_topic_name", "heartbeat_program_id", "heartbeat_interval_secs", "mode", "output_dir",
                "n_threads", "n_consumer_threads", "bucket_name", "config"):
        if key in theirs:
            assert ours[key] == theirs[key], key
    assert ours["download_regex"].pattern == theirs["download_regex"].pattern


def test_command_line_becomes_an_omsd_configuration(tmp_path) -> None:
    from tests.integration.compat_examples.metadata_example import CSVMetadataReproducer

    ini = write_ini(tmp_path / "lab.config", "127.0.0.1:9")
    parsed = CSVMetadataReproducer.get_argument_parser().parse_args([
        "--config", str(ini), "--topic_name", "raw", "--producer_topic_name", "meta", "--n_consumer_threads", "3",
        "--download_regex", r"xrd/.*\.csv", "--heartbeat_topic_name", "hb", "--heartbeat_interval_secs", "12",
        "--consumer_group_id", "lab-meta", "--output_dir", str(tmp_path / "out")])
    args, kwargs = CSVMetadataReproducer.get_init_args_kwargs(parsed)
    config = CSVMetadataReproducer(*args, **kwargs).omsd_config()
    (pipeline,) = config.pipelines
    assert config.workers == 3 and config.broker == {"bootstrap.servers": "127.0.0.1:9"}
    assert config.state_dir == (tmp_path / "out" / "LOGS").resolve()
    assert config.heartbeat.topic == "hb" and config.heartbeat.interval_secs == 12
    assert pipeline.topic == "raw" and pipeline.group_id == "lab-meta"
    assert pipeline.matches("xrd/run1/a.csv") and not pipeline.matches("old/xrd/a.csv")  # anchored like re.match
    ((kind, options),) = pipeline.steps
    assert kind == "openmsistream" and options["topic"] == "meta" and options["kind"] == "metadata"
    assert options["class"] == "tests.integration.compat_examples.metadata_example:CSVMetadataReproducer"


def test_config_error_exits_78_before_kafka(tmp_path) -> None:
    bad = tmp_path / "lab.yaml"
    bad.write_text(f"broker:\n  bootstrap.servers: 127.0.0.1:{free_port()}\nconsumer:\n  colour: red\nbogus: 1\n")
    done = subprocess.run([sys.executable, "-m", "tests.integration.compat_examples.metadata_example", "--config",
                           str(bad), "--topic_name", "raw", "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 78, done.stderr
    assert f"{bad}:5" in done.stderr and "bogus" in done.stderr


# -- end to end against the broker, compared with OpenMSIStream -------------------------------------
def test_metadata_reproducer_sends_what_openmsistream_sends(broker, topic, tmp_path) -> None:
    files = csv_files(1)
    ini = feed_reproducers(broker.bootstrap, topic, tmp_path, files)
    args = ["--config", str(ini), "--topic_name", topic, "--n_consumer_threads", "2"]
    ours = omsd_example("metadata_example", [*args, "--producer_topic_name", f"{topic}-omsd", "--output_dir",
                                             str(tmp_path / "omsd")], tmp_path / "omsd.log")
    theirs = Program([sys.executable, str(EXAMPLES / "oms_runner.py"), str(openmsistream_copy("metadata_example",
                      tmp_path)), "CSVMetadataReproducer", *args, "--producer_topic_name", f"{topic}-oms",
                      "--output_dir", str(tmp_path / "oms")], tmp_path / "oms.log", cwd=tmp_path)
    ours_by_key = same_results(broker.bootstrap, topic, ours, theirs, len(files))
    for rel, data in files.items():
        assert ours_by_key[oms_result_key(rel)] == {
            "filename": rel.rpartition("/")[2], "columns": ["angle", "counts"],
            "n_rows": data.count(b"\n") - 1, "sha256": hashlib.sha256(data).hexdigest()}


def test_processor_side_effects_match_openmsistream_and_failures_are_listed(broker, topic, tmp_path) -> None:
    files = {**csv_files(2), "bad/corrupt_01.csv": b"\x00\x01garbage"}
    ini = write_ini(tmp_path / "lab.config", broker.bootstrap)
    produce_files(broker.bootstrap, topic, files)
    args = ["--config", str(ini), "--topic_name", topic, "--n_threads", "2", "--summary_name", "sums.txt"]
    ours_dir, theirs_dir = tmp_path / "omsd", tmp_path / "oms"
    ours = omsd_example("processor_example", [*args, "--output_dir", str(ours_dir)], tmp_path / "omsd.log")
    theirs = Program([sys.executable, str(openmsistream_copy("processor_example", tmp_path)), *args,
                      "--output_dir", str(theirs_dir)], tmp_path / "oms.log", cwd=tmp_path)
    expected = sorted(f"{rel} {len(data)} {hashlib.sha256(data).hexdigest()}"
                      for rel, data in files.items() if "corrupt" not in rel)
    try:
        ours.wait_for(lambda: lines(ours_dir / "sums.txt") == expected, "omsd: every good file summarised")
        ours.wait_for(lambda: [f["path"] for f in failed_files(ours_dir)] == ["bad/corrupt_01.csv"],
                      "omsd: the corrupt file listed as failed")
        (failure,) = failed_files(ours_dir)
        assert "unreadable header" in failure["error"] and failure["attempts"] == 3
        theirs.wait_for(lambda: lines(theirs_dir / "sums.txt") == expected, "OpenMSIStream: every file summarised")
    finally:
        stop_both(ours, theirs)
    assert lines(ours_dir / "sums.txt") == lines(theirs_dir / "sums.txt")


def test_reproducer_in_disk_mode_matches_openmsistream(broker, topic, tmp_path) -> None:
    files = csv_files(3)
    ini = feed_reproducers(broker.bootstrap, topic, tmp_path, files)
    args = ["--config", str(ini), "--topic_name", topic, "--mode", "disk", "--n_consumer_threads", "2"]
    ours_dir, theirs_dir = tmp_path / "omsd", tmp_path / "oms"
    ours = omsd_example("reproducer_example", [*args, "--producer_topic_name", f"{topic}-omsd", "--output_dir",
                                               str(ours_dir)], tmp_path / "omsd.log")
    theirs = Program([sys.executable, str(openmsistream_copy("reproducer_example", tmp_path)), *args,
                      "--producer_topic_name", f"{topic}-oms", "--output_dir", str(theirs_dir)],
                     tmp_path / "oms.log", cwd=tmp_path)
    ours_by_key = same_results(broker.bootstrap, topic, ours, theirs, len(files))
    for rel, data in files.items():
        assert ours_by_key[oms_result_key(rel)] == {"file": rel.rpartition("/")[2], "lines": data.count(b"\n"),
                                                    "bytes": len(data)}
    saved = {rel: data for rel, data in tree(ours_dir).items() if not rel.startswith("LOGS/")}
    assert saved == files  # "disk" mode: reconstructed under the output directory, as OpenMSIStream does


def test_s3_transfer_processor_matches_openmsistream(broker, topic, tmp_path, s3_endpoint) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                      aws_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
                      region_name=S3_CREDENTIALS["region"])
    ours_bucket, theirs_bucket = f"omsd-{uuid.uuid4().hex[:8]}", f"oms-{uuid.uuid4().hex[:8]}"
    for bucket in (ours_bucket, theirs_bucket):
        s3.create_bucket(Bucket=bucket)
    env = {"ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
           "SECRET_KEY_ID": S3_CREDENTIALS["aws_secret_access_key"], "ENDPOINT_URL": s3_endpoint,
           "REGION": S3_CREDENTIALS["region"]}
    files = {**csv_files(4), "images/frame.bin": random.Random(4).randbytes(300_000)}
    ini = write_ini(tmp_path / "lab.config", broker.bootstrap, s3=True)
    produce_files(broker.bootstrap, topic, files)
    args = ["--config", str(ini), "--topic_name", topic, "--n_threads", "2"]
    ours = omsd_example("s3_example", [ours_bucket, *args, "--output_dir", str(tmp_path / "omsd")],
                        tmp_path / "omsd.log", env)
    theirs = Program([sys.executable, "-m", "openmsistream.s3_buckets.s3_transfer_stream_processor", theirs_bucket,
                      *args, "--output_dir", str(tmp_path / "oms")], tmp_path / "oms.log", env, cwd=tmp_path)

    def objects(bucket: str) -> dict[str, bytes]:
        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}

    expected = {f"{topic}/{rel}": data for rel, data in files.items()}
    try:
        ours.wait_for(lambda: objects(ours_bucket) == expected, "omsd: every object uploaded")
        theirs.wait_for(lambda: objects(theirs_bucket) == expected, "OpenMSIStream: every object uploaded")
    finally:
        stop_both(ours, theirs)
    assert objects(ours_bucket) == objects(theirs_bucket)
