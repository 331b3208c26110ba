"""Making saved files durable in groups, before they are reported.

Steps write files without fsync and note them on the file
(:meth:`workers.datafile.DataFile.note_unsynced`). A worker collects those
paths while it works through the files it holds and, before it sends the
reports for them, calls :func:`make_durable` once: each file is fsynced, then
each directory holding one, once. The supervisor records a file's outcome,
and later commits offsets past it, only after that report, so no offset is
ever committed past a saved file that a power cut could still take away.

The worker does this in a sender thread (see :mod:`workers.outbox`), for a
group of files at a time, so the disk waits overlap the next files' work.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path


def _fsync_path(path: Path | str, flags: int) -> bool:
    """fsync one file or directory; False when it is gone (replaced or removed since it was written).

    EINVAL (a file system that cannot fsync, such as some FUSE mounts) counts as done; other errors
    (an I/O error of the disk) propagate.
    """
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
    return True


def make_durable(paths: Iterable[Path | str]) -> int:
    """fsync every file in ``paths``, then each of their directories once; returns how many files there were.

    Only these files are written back: a ``syncfs`` of the whole file system would also wait for
    everything else dirty on it (spill files of large files being assembled, other programs' writes).
    An I/O error propagates: the caller must not report the files as saved.
    """
    paths = [os.fspath(p) for p in paths]
    for path in paths:
        _fsync_path(path, os.O_RDONLY)
    for directory in dict.fromkeys(os.path.dirname(p) or "." for p in paths):
        try:
            _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # some file systems refuse to fsync a directory; the rename is then as safe as it gets
            pass
    return len(paths)
