"""Step functions for the reliability suites (imported inside worker processes).

Every function appends one line per call with a single ``write`` on a file
opened with O_APPEND, so lines from concurrent workers and daemons never mix.
"""

from __future__ import annotations

import hashlib
import os
import time


def _append(path: str, fields: list[str]) -> None:
    line = ("\t".join(fields) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def record(datafile) -> None:
    """Append ``path, $OMSD_TEST_LABEL, pid`` to $OMSD_TEST_RECORD: who ran this step on which file."""
    _append(os.environ["OMSD_TEST_RECORD"],
            [datafile.relative_filepath, os.environ.get("OMSD_TEST_LABEL", "-"), str(os.getpid())])


def slow(datafile) -> None:
    """Sleep $OMSD_TEST_SLOW seconds (a long analysis); ``.long`` files sleep $OMSD_TEST_LONG instead."""
    name = datafile.relative_filepath
    seconds = os.environ.get("OMSD_TEST_LONG", "0") if name.endswith(".long") else os.environ.get("OMSD_TEST_SLOW", "0")
    if float(seconds) > 0 and os.environ.get("OMSD_TEST_STARTED"):
        _append(os.environ["OMSD_TEST_STARTED"], [name, os.environ.get("OMSD_TEST_LABEL", "-"), str(os.getpid())])
    time.sleep(float(seconds))


def digest(datafile) -> dict:
    """Metadata: the file's path, size and sha512 as the worker saw them."""
    return {"path": datafile.relative_filepath, "size": datafile.size,
            "sha512": hashlib.sha512(bytes(datafile.bytestring)).hexdigest()}


def read_lines(path) -> list[list[str]]:
    """The records of a file written by :func:`record` (empty when it does not exist)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def recorded_paths(path) -> list[str]:
    """Just the paths of :func:`read_lines`, in order."""
    return [fields[0] for fields in read_lines(path)]
