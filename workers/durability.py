"""Making saved files durable in groups, before they are reported.

Steps write files without fsync and note them on the file
(:meth:`workers.datafile.DataFile.note_unsynced`). A worker collects those
paths while it works through the files it holds and, before it sends the
reports for them, calls :func:`make_durable` once: each file is fsynced, then
each directory holding one, once. The supervisor records a file's outcome,
and later commits offsets past it, only after that report, so no offset is
ever committed past a saved file that a power cut could still take away.

On ext4 and similar file systems the first fsync of a group writes back most
of the group at once; the others find little left to do, so a group of small
files costs about as much as one of them did with an fsync each.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable, Iterable
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


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(fd)`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


_SYNCFS = _load_syncfs()


def _syncfs(directory: str) -> bool:
    """One ``syncfs`` of the file system holding ``directory``; False when it cannot be done."""
    if _SYNCFS is None:
        return False
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of the file system of {directory}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return True


def make_durable(paths: Iterable[Path | str]) -> int:
    """Make every file in ``paths`` and its directory entry durable; returns how many files there were.

    One ``syncfs`` per file system holding them (Linux); elsewhere, or if that fails to start, an fsync
    of each file and of each directory once. An I/O error propagates: the caller must not report the
    files as saved.
    """
    paths = [os.fspath(p) for p in paths]
    directories = dict.fromkeys(os.path.dirname(p) or "." for p in paths)
    by_device: dict[int, str] = {}
    for directory in directories:
        try:
            by_device.setdefault(os.stat(directory).st_dev, directory)
        except FileNotFoundError:
            continue
    if _SYNCFS is not None and all(_syncfs(d) for d in by_device.values()):
        return len(paths)
    for path in paths:
        _fsync_path(path, os.O_RDONLY)
    for directory in directories:
        try:
            _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # some file systems refuse to fsync a directory; the rename is then as safe as it gets
            pass
    return len(paths)
