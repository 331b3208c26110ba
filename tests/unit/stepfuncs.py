"""Step functions used by the step and pipeline tests (imported as tests.unit.stepfuncs:NAME)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

NOT_CALLABLE = 42


def meta_dict(datafile):
    return {"name": datafile.filename, "size": datafile.size, "sha256": hashlib.sha256(datafile.bytestring).hexdigest()}


def meta_list(datafile):
    return [1, 2, 3]


def meta_unserialisable(datafile):
    return {"when": object()}


def repro_bytes(datafile):
    return datafile.bytestring[::-1]


def repro_str(datafile):
    return f"len={datafile.size} é"


def repro_dict(datafile):
    return {"relative": datafile.relative_filepath}


def repro_none(datafile):
    return None


def repro_int(datafile):
    return 7


def repro_disk(datafile):
    """Reads the saved copy, proving full_filepath is set."""
    return Path(datafile.full_filepath).read_bytes()


def call_ok(datafile):
    return "anything"


def call_raises(datafile):
    raise RuntimeError("boom from call_raises")


def call_returns_exception(datafile):
    return ValueError("returned, not raised")


def _bump(name: str) -> int:
    """Increment the counter file named by $OMSD_TEST_COUNTER_DIR/name and return the new value."""
    path = Path(os.environ["OMSD_TEST_COUNTER_DIR"]) / name
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    return count


def flaky_twice(datafile):
    """Fails on its first two calls, then succeeds."""
    if _bump("flaky") <= 2:
        raise OSError("transient failure")


def always_fails(datafile):
    _bump("always")
    raise RuntimeError("permanent failure")


def count_calls(datafile):
    _bump(f"calls-{datafile.filename}")


def record_path(datafile):
    """Records what full_filepath the function saw."""
    path = Path(os.environ["OMSD_TEST_COUNTER_DIR"]) / "seen_path"
    path.write_text(json.dumps(str(datafile.full_filepath)))
