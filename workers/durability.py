"""Making saved files durable in groups, before they are reported.

Steps write files without fsync and note them on the file
(:meth:`workers.datafile.DataFile.note_unsynced`). A worker collects those
paths while it works through the files it holds and, before it sends the
reports for them, calls :func:`make_durable` once: each file is fsynced, then
each directory holding one, once — or, for several files on one file system
while no spill file is in use, one ``syncfs`` of it. The supervisor records a file's outcome,
and later commits offsets past it, only after that report, so no offset is
ever committed past a saved file that a power cut could still take away.

The worker does this in a sender thread (see :mod:`workers.outbox`), for a
group of files at a time, so the disk waits overlap the next files' work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterable
from pathlib import Path

try:  # syncfs(2): Linux
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _LIBC.syncfs  # noqa: B018 - raises AttributeError where there is none
except (OSError, AttributeError):
    _LIBC = None


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


SYNCFS_FROM = 4  # files of one group on one file system from which one syncfs may replace their fsyncs


def make_durable(paths: Iterable[Path | str], *, whole_fs: bool = False) -> int:
    """Make every file in ``paths`` durable, with the directory entries naming them; returns how many.

    Each file is fsynced, then each of their directories once: only these files are written back. With
    ``whole_fs`` (the caller knows of no large temporary data, such as spill files, waiting to be
    written there), :data:`SYNCFS_FROM` or more files on one file system are made durable by one
    ``syncfs`` of it instead: one journal commit rather than one per file and directory, which a
    small file's creation otherwise waits behind. An I/O error propagates: the caller must not report
    the files as saved.
    """
    paths = [os.fspath(p) for p in paths]
    devices: dict[str, int | None] = {}  # per directory (one stat each)
    by_device: dict[int, list[str]] = {}
    for path in paths:
        directory = os.path.dirname(path) or "."
        if directory not in devices:
            try:
                devices[directory] = os.stat(directory).st_dev
            except FileNotFoundError:
                devices[directory] = None  # removed since it was written: nothing left to make durable
        device = devices[directory]
        if device is not None:
            by_device.setdefault(device, []).append(path)
    for group in by_device.values():
        if whole_fs and len(group) >= SYNCFS_FROM and _syncfs(os.path.dirname(group[0]) or "."):
            continue
        _fsync_each(group)
    return len(paths)


def _fsync_each(paths: list[str]) -> None:
    """fsync each file, then each of their directories once."""
    for path in paths:
        _fsync_path(path, os.O_RDONLY)
    for directory in dict.fromkeys(os.path.dirname(p) or "." for p in paths):
        try:
            _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # some file systems refuse to fsync a directory; the rename is then as safe as it gets
            pass


def _syncfs(directory: str) -> bool:
    """One ``syncfs`` of the file system holding ``directory``; False where the call is not available."""
    if _LIBC is None:
        return False
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {directory}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return True
