"""Step functions used by the daemon tests (imported inside worker processes)."""

from __future__ import annotations

import os
import time


def slow(datafile) -> None:
    """Sleep for $OMSD_TEST_SLOW seconds: a stand-in for a long analysis."""
    time.sleep(float(os.environ.get("OMSD_TEST_SLOW", "0")))


def record(datafile) -> None:
    """Append the file's path and pid to $OMSD_TEST_RECORD: counts how often a step ran."""
    with open(os.environ["OMSD_TEST_RECORD"], "a", encoding="utf-8") as out:
        out.write(f"{datafile.relative_filepath}\t{os.getpid()}\n")


def recorded(path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.split("\t")[0] for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def record_span(datafile) -> None:
    """Sleep $OMSD_TEST_SLOW seconds for files whose name starts with "slow" or "same" (others: none), then
    append path, content hash, pid, start and end to $OMSD_TEST_RECORD (one JSON line)."""
    import hashlib
    import json

    start = time.time()
    if datafile.filename.startswith(("slow", "same")):
        time.sleep(float(os.environ.get("OMSD_TEST_SLOW", "0")))
    line = {"path": datafile.relative_filepath, "sha": hashlib.sha512(datafile.bytestring).hexdigest()[:16],
            "pid": os.getpid(), "start": start, "end": time.time()}
    with open(os.environ["OMSD_TEST_RECORD"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")

