"""Step functions for the pipeline tests, imported inside worker processes (no Kafka imports here)."""

from __future__ import annotations

import hashlib
import json
import os
import time

#: Iterations of :func:`spin`'s loop; about a second of CPU on this hardware.
SPIN_ITERATIONS = int(os.environ.get("OMSD_TEST_SPIN", "6000000"))


def meta(datafile) -> dict:
    """A metadata dict like a lab's extractor would send."""
    data = datafile.bytestring
    return {"name": datafile.filename, "subdir": datafile.subdir_str, "size": datafile.size,
            "sha256": hashlib.sha256(data).hexdigest(), "lines": data.count(b"\n")}


def summarize_from_disk(datafile) -> str:
    """A reproduce function for mode 'disk': reads the saved file."""
    with open(datafile.full_filepath, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return f"{datafile.relative_filepath} {datafile.size} {digest}"


def fail_while_flagged(datafile) -> None:
    """Fails while the file $OMSD_TEST_FLAG exists; every attempt is appended to $OMSD_TEST_RECORD."""
    flagged = os.path.exists(os.environ["OMSD_TEST_FLAG"])
    with open(os.environ["OMSD_TEST_RECORD"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"path": datafile.relative_filepath, "failed": flagged}) + "\n")
    if flagged:
        raise RuntimeError(f"instrument database offline ({os.environ['OMSD_TEST_FLAG']} exists)")


def record(datafile) -> None:
    """Append the file's path to $OMSD_TEST_RECORD."""
    with open(os.environ["OMSD_TEST_RECORD"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"path": datafile.relative_filepath, "pid": os.getpid()}) + "\n")


def burn(iterations: int) -> int:
    """Pure-Python CPU work (holds the GIL throughout)."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


def spin(datafile) -> None:
    """A CPU-bound analysis; records pid, CPU seconds and wall interval to $OMSD_TEST_RECORD."""
    cpu0, wall0 = time.process_time(), time.time()
    burn(SPIN_ITERATIONS)
    cpu1, wall1 = time.process_time(), time.time()
    with open(os.environ["OMSD_TEST_RECORD"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"path": datafile.relative_filepath, "pid": os.getpid(), "cpu_s": cpu1 - cpu0,
                              "start": wall0, "end": wall1}) + "\n")

