"""Which files under a directory tree changed, from Linux inotify (stdlib only: ctypes, os, struct).

:class:`TreeWatch` watches a directory that may not exist yet and every directory made under it, and
:meth:`TreeWatch.changed` returns, without blocking, the paths (relative to the root) named by the events
read since the last call, so that a poller can ``stat`` those few files instead of listing whole
directories. Where inotify is missing (not Linux, no libc symbol), making a :class:`TreeWatch` raises
``OSError`` and the caller keeps listing directories.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

# Directories under the root: every event that can leave a file with new content or metadata, by a
# rename onto it (temp file + rename), by writing in place (each write, then the close), or by utime/chmod.
TREE_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MODIFY | IN_CREATE | IN_ATTRIB | IN_ONLYDIR
# The root's ancestors, while the root does not exist: only the entries made in them matter.
ANCESTOR_MASK = IN_CREATE | IN_MOVED_TO | IN_ONLYDIR

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)
_READ_SIZE = 64 * 1024  # many events per read; at least sizeof(struct inotify_event) + NAME_MAX + 1


class Changes(NamedTuple):
    """What :meth:`TreeWatch.changed` saw: the paths named, and whether events were lost."""

    paths: set[str]
    overflow: bool  # the kernel's queue overflowed: events were dropped, the caller must look at everything


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.inotify_rm_watch.restype = ctypes.c_int
    except AttributeError as exc:  # no such symbol: not Linux
        raise OSError(errno.ENOSYS, f"inotify not available: {exc}") from exc
    return libc


class TreeWatch:
    """Watches ``root`` (made later, perhaps) and every directory under it.

    Files present when the watch is made are not reported: the caller looks at them once after making
    it (any change from then on makes an event). Files in a directory made later are reported once, from
    a listing made right after its watch was added, since they may have been written before it.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._fd = -1
        self._root = os.path.abspath(os.fspath(root))
        self._libc = _libc()
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory relative to the root ("" for the root)
        self._ancestors: dict[int, str] = {}  # watch descriptor -> absolute path, while the root is missing
        self._root_wd: int | None = None
        try:
            self._descend(None)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Close the inotify descriptor (which drops every watch)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def changed(self) -> Changes:
        """The paths named by the events since the last call (non-blocking; relative to the root)."""
        paths: set[str] = set()
        named: set[tuple[str, bytes]] = set()  # (directory, name as read): a file has several events per round
        overflow = descend = False
        unpack, header, dirs, ancestors = _EVENT.unpack_from, _EVENT.size, self._dirs, self._ancestors
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            offset, end = 0, len(data)
            while offset < end:
                wd, mask, _cookie, length = unpack(data, offset)
                start = offset + header
                offset = start + length
                rel = dirs.get(wd)
                if rel is not None and not mask & (IN_ISDIR | IN_IGNORED) and length:
                    named.add((rel, data[start:offset]))  # the common case: a file in a watched directory
                    continue
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                    continue
                if wd in ancestors:
                    if mask & IN_IGNORED:
                        del ancestors[wd]
                    elif mask & IN_ISDIR and self._root_wd is None:
                        descend = True  # perhaps the next directory on the way to the root
                    continue
                if rel is None:
                    continue
                if mask & IN_IGNORED:  # the directory was removed
                    del dirs[wd]
                    if wd == self._root_wd:
                        self._root_wd = None
                        descend = True  # wait for it to be made again
                    continue
                if length and mask & (IN_CREATE | IN_MOVED_TO):  # a directory made or moved in
                    name = os.fsdecode(data[start:offset].rstrip(b"\0"))
                    self._watch_tree(f"{rel}/{name}" if rel else name, paths)
        for rel, raw in named:
            name = os.fsdecode(raw.rstrip(b"\0"))  # the name is padded with NULs
            paths.add(f"{rel}/{name}" if rel else name)
        if descend and self._root_wd is None:
            self._descend(paths)
        if overflow:
            # Directories made while events were dropped have no watch yet; add them (their files are
            # the caller's to look at, with everything else).
            if self._root_wd is None:
                self._descend(None)
            else:
                self._watch_tree("", None)
        return Changes(paths, overflow)

    # -- watches -----------------------------------------------------------------------------------
    def _add_watch(self, path: str, mask: int) -> int | None:
        """The watch descriptor, or None if ``path`` is gone or not a directory (any other error raises)."""
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd >= 0:
            return wd
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")

    def _descend(self, paths: set[str] | None) -> None:
        """Watch the nearest existing ancestor of the root, then each directory down to the root as it exists."""
        while True:
            path = self._root
            while not os.path.isdir(path) and os.path.dirname(path) != path:
                path = os.path.dirname(path)
            if path == self._root:
                if self._watch_tree("", paths) is not None:
                    for wd in list(self._ancestors):  # no longer needed: their entries are not ours
                        del self._ancestors[wd]
                        self._libc.inotify_rm_watch(self._fd, wd)
                    return
                continue  # removed again meanwhile
            wd = self._add_watch(path, ANCESTOR_MASK)
            if wd is None:
                continue
            self._ancestors[wd] = path
            # The next directory down may have been made before this watch was added (no event for it).
            below = self._root[len(path):].lstrip(os.sep).split(os.sep, 1)[0]
            if not os.path.isdir(os.path.join(path, below)):
                return

    def _watch_tree(self, rel: str, paths: set[str] | None) -> int | None:
        """Watch directory ``rel`` and every directory under it; add the files found to ``paths``.

        The watch comes before the listing, so that a file is either listed or makes an event.
        Returns the watch descriptor of ``rel`` (None if it is gone).
        """
        top: int | None = None
        stack = [rel]
        while stack:
            current = stack.pop()
            path = os.path.join(self._root, current) if current else self._root
            wd = self._add_watch(path, TREE_MASK)
            if wd is None:
                continue
            self._dirs[wd] = current  # the same directory moved within the tree keeps its descriptor
            if current == rel:
                top = wd
                if not rel:
                    self._root_wd = wd
            try:
                entries = os.scandir(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    child = f"{current}/{entry.name}" if current else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(child)
                    elif paths is not None:
                        paths.add(child)
        return top
