#!/usr/bin/env python3
"""Benchmark `omsd upload` against OpenMSIStream's uploader and a raw producer loop.

One run: generate N random files, start a fresh embedded broker (Tansu), then
time, on separate topics of that broker:

* ``omsd upload DIR`` as a subprocess, from launch to exit (exit 0 = every
  chunk acknowledged);
* OpenMSIStream's ``DataFileUploadDirectory DIR --upload_existing`` as a
  subprocess with its shipped producer settings, from launch until it has
  exited after its registry listed every file as fully produced (it is
  stopped with its documented "q" command); ``--openmsistream per-file``
  runs its ``UploadDataFile`` script once per file instead;
* a bare confluent-kafka producer loop sending the same bytes in chunks of
  the same size (no hashing, no encoding, no process start): the ceiling.

Usage: python bench/bench_upload.py [--files 24] [--size-mib 20] [--repeat 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from omsd.dev.broker import EmbeddedBroker  # noqa: E402
from precompile import compile_sources  # noqa: E402
from omsd.kafka import PRODUCER_DEFAULTS  # noqa: E402
from omsd.wire.protocol import DEFAULT_CHUNK_SIZE  # noqa: E402

BIN = Path(sys.executable).parent

# The [producer] section OpenMSIStream ships in its config files (test.config, local_broker_test.config).
OPENMSISTREAM_PRODUCER = {"batch.size": "2000000", "linger.ms": "100", "compression.type": "lz4"}


def _cpu_seconds(broker: psutil.Process) -> tuple[float, float]:
    """CPU seconds so far of (this process + its finished children, the broker)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    times = broker.cpu_times()
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, times.user + times.system


def make_files(directory: Path, count: int, size: int) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    block = 1 << 20
    for i in range(count):
        with open(directory / f"file_{i:03d}.bin", "wb") as fh:
            left = size
            while left:
                n = min(block, left)
                fh.write(os.urandom(n))
                left -= n
    return count * size


def warm(directory: Path) -> None:
    """Read every file once so that no contender pays for the disk."""
    for path in sorted(directory.iterdir()):
        with open(path, "rb") as fh:
            while fh.read(8 << 20):
                pass


def time_omsd(bootstrap: str, data: Path, work: Path, topic: str, chunk_size: int) -> float:
    config = work / "omsd.yaml"
    config.write_text(f"broker:\n  bootstrap.servers: {bootstrap}\nstate_dir: {work / 'state'}\n")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "omsd.cli", "upload", str(data), "--config", str(config),
                           "--topic", topic, "--chunk-size", str(chunk_size), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"omsd upload failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def openmsistream_config(path: Path, bootstrap: str, compression: str) -> Path:
    producer = {**OPENMSISTREAM_PRODUCER, "compression.type": compression}
    lines = ["[broker]", f"bootstrap.servers = {bootstrap}", "", "[producer]"]
    lines += [f"{k} = {v}" for k, v in producer.items()]
    lines += ["key.serializer = StringSerializer", "value.serializer = DataFileChunkSerializer", ""]
    path.write_text("\n".join(lines))
    return path


def _completed(registry_dir: Path, topic: str) -> int:
    names = set()
    for path in registry_dir.glob(f"uploaded_to_{topic}*.csv"):
        try:
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh, delimiter=";"):
                    names.add(row.get("rel_filepath"))
        except (OSError, csv.Error):
            continue
    return len(names)


def time_openmsistream_directory(bootstrap: str, data: Path, work: Path, topic: str, chunk_size: int,
                                 n_files: int, compression: str) -> float:
    config = openmsistream_config(work / "omsi.config", bootstrap, compression)
    logs = work / f"omsi_logs_{topic}"
    started = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "DataFileUploadDirectory"), str(data), "--config", str(config),
                             "--topic_name", topic, "--upload_existing", "--chunk_size", str(chunk_size),
                             "--logger_file_path", str(logs)],
                            cwd=work, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while _completed(logs, topic) < n_files:
            if proc.poll() is not None:
                raise SystemExit(f"DataFileUploadDirectory exited early ({proc.returncode}); see {logs}")
            time.sleep(0.05)
        proc.stdin.write(b"q\n")
        proc.stdin.flush()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return time.perf_counter() - started


def time_openmsistream_per_file(bootstrap: str, data: Path, work: Path, topic: str, chunk_size: int,
                                compression: str) -> float:
    config = openmsistream_config(work / "omsi.config", bootstrap, compression)
    started = time.perf_counter()
    for path in sorted(data.iterdir()):
        proc = subprocess.run([str(BIN / "UploadDataFile"), str(path), "--config", str(config),
                               "--topic_name", topic, "--chunk_size", str(chunk_size)],
                              cwd=work, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"UploadDataFile failed on {path}: {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def time_raw(bootstrap: str, data: Path, topic: str, chunk_size: int) -> float:
    producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap})
    producer.list_topics(topic, timeout=10)
    failures: list[str] = []

    def report(err, _msg) -> None:
        if err is not None:
            failures.append(err.str())

    started = time.perf_counter()
    for path in sorted(data.iterdir()):
        with open(path, "rb") as fh:
            i = 0
            while chunk := fh.read(chunk_size):
                i += 1
                while True:
                    try:
                        producer.produce(topic, value=chunk, key=f"{path.name}_chunk_{i}", on_delivery=report)
                        break
                    except BufferError:
                        producer.poll(0.01)
                producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    if left or failures:
        raise SystemExit(f"raw producer: {left} undelivered, {len(failures)} failed ({failures[:1]})")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--size-mib", type=float, default=20.0)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the best is reported")
    parser.add_argument("--openmsistream", choices=("directory", "per-file", "none"), default="directory",
                        help="DataFileUploadDirectory (default), UploadDataFile once per file, or skip")
    parser.add_argument("--openmsistream-compression", default=OPENMSISTREAM_PRODUCER["compression.type"],
                        help="compression.type for OpenMSIStream (its shipped configs use lz4)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    compile_sources()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="omsd-bench-"))
    data = work / "data"
    size = int(args.size_mib * (1 << 20))
    try:
        if data.is_dir():
            shutil.rmtree(data)
        total = make_files(data, args.files, size)
        warm(data)
        mb = total / 1e6
        print(f"{args.files} files x {args.size_mib:g} MiB = {mb:.1f} MB, chunk {args.chunk_size} B, "
              f"{os.cpu_count()} CPUs", flush=True)
        best: dict[str, float] = {}
        runs: dict[str, list[float]] = {}
        contenders = {
            "raw producer": lambda bootstrap, topic: time_raw(bootstrap, data, topic, args.chunk_size),
            "omsd upload": lambda bootstrap, topic: time_omsd(bootstrap, data, work, topic, args.chunk_size),
        }
        if args.openmsistream == "directory":
            contenders["OpenMSIStream"] = lambda bootstrap, topic: time_openmsistream_directory(
                bootstrap, data, work, topic, args.chunk_size, args.files, args.openmsistream_compression)
        elif args.openmsistream == "per-file":
            contenders["OpenMSIStream"] = lambda bootstrap, topic: time_openmsistream_per_file(
                bootstrap, data, work, topic, args.chunk_size, args.openmsistream_compression)
        for run in range(args.repeat):
            for name, measure in contenders.items():
                # A fresh broker for every measurement: Tansu keeps everything in memory and
                # slows down as it fills, which would favour whoever runs first.
                with EmbeddedBroker(data_dir=work / "broker") as broker:
                    broker_proc = psutil.Process(broker.process.pid)
                    before = _cpu_seconds(broker_proc)
                    seconds = measure(broker.bootstrap, f"bench-{run}")
                    after = _cpu_seconds(broker_proc)
                runs.setdefault(name, []).append(seconds)
                best[name] = min(seconds, best.get(name, float("inf")))
                print(f"  run {run + 1}: {name:<14} {seconds:6.2f} s  {mb / seconds:7.1f} MB/s   "
                      f"CPU s: tool {after[0] - before[0]:5.2f}  broker {after[1] - before[1]:5.2f}", flush=True)
            if "OpenMSIStream" in runs:
                ratio = runs["OpenMSIStream"][-1] / runs["omsd upload"][-1]
                print(f"  run {run + 1}: omsd / OpenMSIStream {ratio:.2f}x", flush=True)
        tool = "DataFileUploadDirectory" if args.openmsistream == "directory" else "UploadDataFile per file"
        what = {"OpenMSIStream": f"OpenMSIStream ({tool}, {args.openmsistream_compression})"}
        print("best of", args.repeat)
        for name, seconds in best.items():
            print(f"  {what.get(name, name):<50} {mb / seconds:7.1f} MB/s  ({seconds:.2f} s)")
        if "OpenMSIStream" in best:
            print(f"  omsd / OpenMSIStream: {best['OpenMSIStream'] / best['omsd upload']:.2f}x")
        print(f"  omsd / raw producer:  {best['raw producer'] / best['omsd upload']:.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
