"""The ``save`` step: write the file to ``dir/subdir/filename``, atomically.

The bytes go from the staging file into a temporary file in the target
directory, which is given the uploader's mtime and renamed over the target.
A reader never sees a partial file, and running the step again rewrites
identical content. Nothing is fsynced here: the saved path is noted on the
file (:meth:`DataFile.note_unsynced`), and the worker makes every file it
saved durable in one go (:mod:`workers.durability`) before it reports them,
so the supervisor records a save, and commits offsets past it, only once the
file and its directory entry are on disk.

Files of a MiB or more are written with direct I/O (``O_DIRECT``) straight from
a read-only mapping of the staged bytes: the disk reads them from shared
memory, and no CPU time goes into copying them into the page cache (on a small
machine that copy costs about half as much CPU as the sha512). Where the file
system refuses direct I/O, or with ``direct_io: false``, the bytes are copied
through the page cache (``copy_file_range`` or ``sendfile`` where the kernel
allows, plain reads and writes otherwise). A small file whose bytes the worker
read for its hash (:meth:`DataFile.hold_verified`) is written from them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path

from omsd.wire.paths import locate_under, safe_path_under
from workers.datafile import DataFile
from workers.mapped import for_each_window
from workers.steps.base import Option, OutboundMessage, Step, StepConfigError, StepContext

COPY_BLOCK = 64 * 1024 * 1024
TEMP_PREFIX = ".omsd-tmp-"
DIRECT_ALIGN = 4096  # O_DIRECT offsets and lengths: whole logical blocks (4096 also covers 512-byte ones)
DIRECT_MIN = 1 << 20  # below this, direct I/O saves too little to be worth a synchronous disk write
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_FALLBACK_ERRNOS = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EPERM}
# Refusals that hold for every file of a (source, target) file-system pair (copy_file_range from tmpfs
# to ext4 is EXDEV every time): remembered per pair, so a small file does not pay a failed call first.
_PAIR_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
_REFUSED: dict[tuple[int, int], set[str]] = {}


def target_path(datafile: DataFile, root: str | os.PathLike[str]) -> Path:
    """Where ``datafile`` goes under ``root``; raises UnsafePathError if it would escape."""
    return safe_path_under(root, datafile.subdir_str, datafile.filename)


def _copy_with(method: str, src: int, dst: int, offset: int, count: int) -> int:
    if method == "copy_file_range":
        return os.copy_file_range(src, dst, count, offset, offset)
    if method == "sendfile":
        return os.sendfile(dst, src, offset, count)
    data = os.pread(src, count, offset)
    pwrite_all(dst, memoryview(data), offset)
    return len(data)


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """Write all of ``view`` at ``offset`` of ``fd`` (``pwrite`` may write less than asked)."""
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)


def copy_range(src: int, dst: int, size: int, block: int = COPY_BLOCK, methods: list[str] | None = None) -> None:
    """Copy bytes ``[0, size)`` of fd ``src`` to the same offsets of fd ``dst``.

    Tries ``copy_file_range``, then ``sendfile``, then reads and writes,
    moving on when the kernel refuses a method for this pair of files; a method
    the kernel refuses for the pair of file systems is skipped from then on.
    """
    pair: tuple[int, int] | None = None
    if methods is None:
        pair = (os.fstat(src).st_dev, os.fstat(dst).st_dev)
        refused = _REFUSED.get(pair, ())
        methods = [m for m in ("copy_file_range", "sendfile") if hasattr(os, m) and m not in refused] + ["readwrite"]
    methods = list(methods)
    offset = 0
    while offset < size:
        method = methods[0]
        os.lseek(dst, offset, os.SEEK_SET)  # sendfile writes at the file position
        try:
            done = _copy_with(method, src, dst, offset, min(block, size - offset))
        except OSError as exc:
            if method != "readwrite" and exc.errno in _FALLBACK_ERRNOS:
                methods.pop(0)
                if pair is not None and exc.errno in _PAIR_ERRNOS:
                    _REFUSED.setdefault(pair, set()).add(method)
                continue
            raise
        if done == 0:
            raise OSError(errno.EIO, f"source ended after {offset} of {size} bytes")
        offset += done


class _DirectRefused(Exception):
    """The file system will not do direct I/O for this file."""


def write_direct(src: int, temp: str, size: int) -> bool:
    """Write bytes ``[0, size)`` of ``src`` into a new file ``temp`` with O_DIRECT, and fsync it.

    The whole blocks go straight from a mapping of ``src`` to the disk; the last
    partial block goes through the page cache. Returns False when the file
    system refuses direct I/O (``temp`` may then exist, truncated or partial).
    """
    try:
        dst = os.open(temp, _WRITE_FLAGS | os.O_DIRECT, 0o666)
    except OSError as exc:
        if exc.errno in _FALLBACK_ERRNOS:
            return False
        raise
    aligned = size - size % DIRECT_ALIGN

    def visit(offset: int, view: memoryview) -> None:
        direct = max(0, min(len(view), aligned - offset))
        try:
            pwrite_all(dst, view[:direct], offset)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # alignment the device does not accept
                raise _DirectRefused from exc
            raise
        if direct < len(view):
            fcntl.fcntl(dst, fcntl.F_SETFL, fcntl.fcntl(dst, fcntl.F_GETFL) & ~os.O_DIRECT)
            pwrite_all(dst, view[direct:], offset + direct)

    try:
        copied = for_each_window(src, size, visit)
        if copied < size:
            raise OSError(errno.EIO, f"source ended after {copied} of {size} bytes")
        # A large file is fsynced here, while the worker's hash of it still runs (see workers.main), so
        # the worker's durability barrier after the rename finds little left to do; small files leave
        # it all to the barrier, where a group of them shares the waits.
        os.fsync(dst)
    except _DirectRefused:
        return False
    finally:
        os.close(dst)
    return True


def write_buffered(src: int, temp: str, size: int) -> None:
    """Copy bytes ``[0, size)`` of ``src`` into a new file ``temp`` through the page cache (not fsynced)."""
    dst = os.open(temp, _WRITE_FLAGS, 0o666)
    try:
        copy_range(src, dst, size)
        os.ftruncate(dst, size)
    finally:
        os.close(dst)


def _temp_for(target: str) -> str:
    # One name per target: a copy left behind by a worker killed mid-save is overwritten (then renamed
    # away) when the file is handed out again; a path is only ever saved by one worker at a time.
    directory, name = os.path.split(target)
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return os.path.join(directory, TEMP_PREFIX + digest)


def _checked_target(datafile: DataFile, root: str | os.PathLike[str]) -> str:
    """The file's target under ``root``, its directory created; refused if it would escape the root or
    if a directory is in the way. The check's own ``lstat`` calls say whether the directory exists and
    what the target is, so a small file costs no further ``stat``."""
    found = locate_under(root, datafile.subdir_str, datafile.filename)
    parent_is_dir = found.parent_is_dir
    if parent_is_dir is None:
        parent_is_dir = os.path.isdir(os.path.dirname(found.path))
    if not parent_is_dir:
        os.makedirs(os.path.dirname(found.path), exist_ok=True)
        found = locate_under(root, datafile.subdir_str, datafile.filename)  # re-check: nothing swapped in
    target_is_dir = found.target_is_dir
    if target_is_dir is None:
        target_is_dir = os.path.isdir(found.path)
    if target_is_dir:
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way", found.path)
    return found.path


def write_from_memory(content: bytes, temp: str) -> None:
    """Write ``content`` into a new file ``temp`` through the page cache (not fsynced)."""
    dst = os.open(temp, _WRITE_FLAGS, 0o666)
    try:
        view, written = memoryview(content), 0
        while written < len(view):
            written += os.write(dst, view[written:])
    finally:
        os.close(dst)


def _write_temp(datafile: DataFile, temp: str, direct_io: bool) -> None:
    """Fill ``temp`` with the file's bytes (removed again if that fails)."""
    content = datafile.content_in_memory  # a small file the worker has read already
    if content is not None and not (direct_io and datafile.size >= DIRECT_MIN):
        try:
            write_from_memory(content, temp)
        except BaseException:
            _remove(temp)
            raise
        return
    src = os.open(datafile.staged_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not (direct_io and datafile.size >= DIRECT_MIN and write_direct(src, temp, datafile.size)):
            write_buffered(src, temp, datafile.size)
    except BaseException:
        _remove(temp)
        raise
    finally:
        os.close(src)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # e.g. never created, or a read-only file system: the original error matters
        pass


def prepare_save(datafile: DataFile, root: str | os.PathLike[str], direct_io: bool = True) -> None:
    """Write the temporary copy that :func:`save_datafile` would write, ahead of time.

    Called while the worker is still verifying the file's hash: nothing becomes
    visible (the temporary name is hidden and the target is untouched). The
    next :func:`save_datafile` of this file under ``root`` renames it into place;
    :meth:`DataFile.discard_prepared` removes it if the hash fails.
    """
    target = _checked_target(datafile, root)
    temp = _temp_for(target)
    _write_temp(datafile, temp, direct_io)
    datafile.add_prepared(target, temp, os.fspath(root))


def save_datafile(datafile: DataFile, root: str | os.PathLike[str], direct_io: bool = True) -> Path:
    """Write ``datafile`` under ``root`` atomically, set its ``full_filepath``, return the path.

    The file is not yet durable when this returns: it is noted on ``datafile`` for the worker's next
    :func:`workers.durability.make_durable` (or call :func:`make_durable` on ``datafile.take_unsynced()``).
    """
    # A copy prepared moments ago was checked then; its target is not resolved again.
    target = datafile.prepared_target(os.fspath(root)) or _checked_target(datafile, root)
    temp = _temp_for(target)
    if datafile.take_prepared(target) != temp:
        _write_temp(datafile, temp, direct_io)
    try:
        if datafile.file_mtime is not None:
            os.utime(temp, (datafile.file_mtime, datafile.file_mtime))
        os.replace(temp, target)
    except BaseException:
        _remove(temp)
        raise
    datafile.note_unsynced(target)
    datafile.full_filepath = target
    return datafile.full_filepath


class SaveStep(Step):
    """``save: {dir, direct_io?}`` — keep a copy of the file under ``dir``."""

    kind = "save"
    OPTIONS = {"dir": Option((str,), required=True), "direct_io": Option((bool,), default=True)}

    def __init__(self, options: dict | None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        if not self.options["dir"].strip():
            raise StepConfigError(f"{self.where}: option 'dir' must not be empty")
        self.root = Path(self.options["dir"])

    @property
    def saves_file(self) -> bool:
        return True

    def prepare(self, datafile: DataFile) -> None:
        prepare_save(datafile, self.root, direct_io=self.options["direct_io"])

    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        save_datafile(ctx.datafile, self.root, direct_io=self.options["direct_io"])
        return []

    def restore(self, ctx: StepContext) -> None:
        ctx.datafile.full_filepath = target_path(ctx.datafile, self.root)
