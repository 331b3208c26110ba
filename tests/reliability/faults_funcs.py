"""Step functions for the reliability suites (imported inside worker processes: stdlib only)."""

from __future__ import annotations

import hashlib
import os


def record(datafile) -> None:
    """Append ``path<TAB>sha512<TAB>pid`` to $OMSD_FAULTS_RECORD: how often, and on what bytes, a step ran."""
    digest = hashlib.sha512(bytes(datafile.bytestring)).hexdigest()
    with open(os.environ["OMSD_FAULTS_RECORD"], "a", encoding="utf-8") as out:
        out.write(f"{datafile.relative_filepath}\t{digest}\t{os.getpid()}\n")


def recorded(path: os.PathLike[str] | str) -> list[tuple[str, str]]:
    """(relative path, sha512 hex) of every run that :func:`record` saw, in order."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [tuple(line.rstrip("\n").split("\t")[:2]) for line in handle if line.strip()]  # type: ignore[misc]
    except FileNotFoundError:
        return []


def hang_on_stuck(datafile) -> None:
    """Append ``path<TAB>pid`` to $OMSD_FAULTS_CALLS; never return for a file whose name has "stuck" in it."""
    import time

    with open(os.environ["OMSD_FAULTS_CALLS"], "a", encoding="utf-8") as out:
        out.write(f"{datafile.relative_filepath}\t{os.getpid()}\n")
    if "stuck" in datafile.filename:
        while True:  # a hung analysis: only the watchdog ends it
            time.sleep(3600)


def calls(path: os.PathLike[str] | str) -> list[str]:
    """The relative paths :func:`hang_on_stuck` was called on, in order."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.split("\t")[0] for line in handle if line.strip()]
    except FileNotFoundError:
        return []
