"""Encrypted (KafkaCrypto) against plain download with `omsd download`, in one run.

One fresh embedded broker; one data set uploaded twice with `omsd upload`, once in the plain and once
encrypted (nodes provisioned offline, tests/crypto_support.py), each into its own topic. The encrypting
upload stays up (--key-linger-secs) so that it answers the downloader's key requests. Then `omsd download`
reads each topic with a fresh state directory and consumer group; each run is timed from its launch
until every file is on disk (omsd renames a file into place only once its sha512 matched), with the
time until the first file is saved. Files are compared with the source at the end.

    .venv/bin/python bench/bench_crypto.py                  # 24 files of 8 MiB
    .venv/bin/python bench/bench_crypto.py --files 8 --size-mib 4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from omsd.dev.broker import EMBEDDED_SESSION_TIMEOUT_MS, EmbeddedBroker  # noqa: E402
from precompile import compile_sources  # noqa: E402
from tests.crypto_support import provision  # noqa: E402

PY = sys.executable


def config(path: Path, bootstrap: str, state: Path, crypto: str | None) -> Path:
    path.write_text(f"broker:\n  bootstrap.servers: {bootstrap}\nconsumer:\n"
                    f"  session.timeout.ms: {EMBEDDED_SESSION_TIMEOUT_MS}\n  heartbeat.interval.ms: 500\n"
                    f"state_dir: {state}\nworkers: 2\n" + (f"kafkacrypto: {crypto}\n" if crypto else ""))
    return path


def upload(src: Path, cfg: Path, topic: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "omsd.cli", "upload", str(src), "--config", str(cfg), "--topic", topic,
                             *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def download(out: Path, cfg: Path, topic: str, names: list[str], log: Path) -> tuple[float, float]:
    """Seconds from launch to the first file and to every file on disk."""
    start = time.monotonic()
    proc = subprocess.Popen([PY, "-m", "omsd.cli", "download", str(out), "--config", str(cfg), "--topic", topic],
                            cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    first = None
    try:
        while True:
            present = sum((out / name).exists() for name in names)
            now = time.monotonic() - start
            if present and first is None:
                first = now
            if present == len(names):
                return first or now, now
            if proc.poll() is not None or now > 600:
                raise SystemExit(f"download of {topic} stopped or timed out; see {log}")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--size-mib", type=float, default=8.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep data, outputs and logs here")
    args = parser.parse_args()
    compile_sources()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="omsd-bench-crypto-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(data_dir=work / "broker")
    broker.start()
    try:
        nodes = work / "nodes"
        provision(nodes, ["bench_up", "bench_down"], broker.bootstrap)
        src = work / "src"
        src.mkdir()
        size = int(args.size_mib * (1 << 20))
        names = [f"file{i:03d}.bin" for i in range(args.files)]
        digests = {}
        for name in names:
            data = os.urandom(size)
            (src / name).write_bytes(data)
            digests[name] = hashlib.sha512(data).digest()
        total = size * len(names)
        plain_up = config(work / "plain-up.yaml", broker.bootstrap, work / "s-pu", None)
        crypto_up = config(nodes / "crypto-up.yaml", broker.bootstrap, work / "s-cu", "{node_id: bench_up}")
        proc = upload(src, plain_up, "bench_plain")
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        started = time.monotonic()
        holder = upload(src, crypto_up, "bench_crypto", "--key-linger-secs", "3600")
        while "to answer key requests" not in (line := holder.stderr.readline()):  # its last chunk was acked
            if not line:
                raise SystemExit(f"encrypted upload failed (exit {holder.wait()})")
        encrypt_s = time.monotonic() - started
        try:
            results = {}
            for name, topic, cfg in (
                    ("plain", "bench_plain", config(work / "plain-down.yaml", broker.bootstrap, work / "s-pd", None)),
                    ("encrypted", "bench_crypto", config(nodes / "crypto-down.yaml", broker.bootstrap, work / "s-cd",
                                                         "{node_id: bench_down}"))):
                out = work / f"out-{name}"
                results[name] = download(out, cfg, topic, names, work / f"{name}.log")
                for file in names:
                    assert hashlib.sha512((out / file).read_bytes()).digest() == digests[file], (name, file)
        finally:
            holder.send_signal(signal.SIGINT)
            holder.wait(60)
    finally:
        broker.stop()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    mb = total / 1e6
    print(f"{len(names)} files x {args.size_mib:g} MiB = {mb:.0f} MB; encrypted upload took {encrypt_s:.1f} s "
          f"({mb / encrypt_s:.0f} MB/s, until its last chunk was acknowledged)")
    for name, (first, everything) in results.items():
        rest = mb * (len(names) - 1) / len(names) / max(everything - first, 1e-3)
        print(f"  {name:9s} download: first file after {first:5.2f} s, all after {everything:6.2f} s "
              f"({mb / everything:6.1f} MB/s from launch, {rest:6.1f} MB/s after the first file)")
    ratio = results["plain"][1] / results["encrypted"][1]
    print(f"  encrypted/plain throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
