"""Which files an upload sends: command-line paths and directory trees, and how each one travels."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omsd.wire.paths import UnsafePathError, safe_relative_path

# OpenMSIStream's DataFileUploadDirectory default (RunConstants.DEFAULT_UPLOAD_REGEX), verbatim. Matched from the
# start of the relative path, it skips paths that start with "." or contain "log" after their first character
# (x.log, but also catalog.csv and mylogs/a.dat), and names with a newline ("." does not match one).
OPENMSISTREAM_UPLOAD_REGEX = r"^((?!(\.|.*.log))).*$"


@dataclass(frozen=True)
class FileEntry:
    """A file on disk and where it goes in the upload tree."""

    path: Path
    subdir_str: str
    filename: str

    @property
    def relative_path(self) -> str:
        return f"{self.subdir_str}/{self.filename}" if self.subdir_str else self.filename

    def cannot_travel(self) -> str | None:
        """Why this file's name cannot be sent as an OpenMSIStream chunk, or None when it can.

        The wire's ``filename`` and ``subdir_str`` are UTF-8 strings, so a name
        that is not valid UTF-8 (kept by the OS as surrogate escapes) cannot be
        sent as it is; readers refuse names with a backslash or a NUL.
        """
        try:
            self.relative_path.encode("utf-8")
        except UnicodeEncodeError:
            return "its name is not valid UTF-8 (OpenMSIStream's file names are UTF-8 strings); rename it to send it"
        try:
            safe_relative_path(self.subdir_str, self.filename)
        except UnsafePathError as exc:
            return f"readers refuse its name ({exc})"
        return None


def display_path(rel: str) -> str:
    """A relative path for one line of output: as it is when printable, else quoted with escapes."""
    if rel.isprintable():
        return rel
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by the OS as surrogate escapes: show the bytes
        return repr(os.fsencode(rel))[1:]
    return repr(rel)


def collect_files(paths: list[Path], match: re.Pattern[str] | None = None) -> list[FileEntry]:
    """Expand file and directory arguments; raise FileNotFoundError for a missing one.

    ``match`` filters the files found in directories; files named directly are always kept.
    """
    entries: list[FileEntry] = []
    for given in paths:
        if given.is_dir():
            entries.extend(walk_directory(given, match=match))
        elif given.is_file():
            entries.append(FileEntry(given, "", given.name))
        elif given.exists():
            raise FileNotFoundError(f"{given} is neither a regular file nor a directory")
        else:
            raise FileNotFoundError(f"{given} does not exist")
    return entries


def walk_directory(root: Path, *, skip_hidden: bool = False,
                   match: re.Pattern[str] | None = None) -> Iterator[FileEntry]:
    """Regular files under ``root`` in sorted order, with their posix subdirectory.

    ``match`` keeps only relative paths it matches from their start (``re.match``, as OpenMSIStream does).
    """
    for dirpath, dirnames, filenames in os.walk(root):
        if skip_hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        subdir = "" if rel_dir == "." else rel_dir
        for name in sorted(filenames):
            if skip_hidden and name.startswith("."):
                continue
            if match is not None and not match.match(f"{subdir}/{name}" if subdir else name):
                continue
            path = Path(dirpath, name)
            try:
                if not stat.S_ISREG(path.stat().st_mode):
                    continue
            except OSError:
                continue
            yield FileEntry(path, subdir, name)
