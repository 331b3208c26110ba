"""The completed file that pipeline steps and user step functions receive.

A :class:`DataFile` points at the staged bytes of one reassembled file (a
shared-memory file under ``/dev/shm`` or a spill file on disk; only its first
``size`` bytes belong to the file) and, once a ``save`` step has run, at the
saved copy (:attr:`DataFile.full_filepath`). Reading the content always reads
the staged bytes (verified, in memory while the budget allows, and the same
bytes the saved copy holds). Its read-only attributes follow
the names OpenMSIStream's ``DownloadDataFile`` gives user code (``filename``,
``subdir_str``, ``relative_filepath``, ``filepath``, ``full_filepath``,
``bytestring``, ``check_file_hash``), so existing processing functions work
unchanged.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

DEFAULT_BLOCK = 8 * 1024 * 1024


def apply_filename_append(filename: str, filename_append: str) -> str:
    """Return ``filename`` with ``filename_append`` put before its suffix.

    OpenMSIStream names a downloaded file ``stem + filename_append + suffix``.
    """
    if not filename_append:
        return filename
    name = PurePosixPath(filename)
    return f"{name.stem}{filename_append}{name.suffix}"


class _BoundedFile(io.RawIOBase):
    """A read-only, seekable view of the first ``size`` bytes of a file."""

    def __init__(self, path: str | os.PathLike[str], size: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._size = size
        self._pos = 0
        self.name = os.fspath(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [view[:want]], self._pos)
        self._pos += got
        return got

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class DataFile:
    """One completed, hash-verified file as seen by pipeline steps.

    ``filename`` is the name the file is saved under: the name from the
    message with ``filename_append`` applied, as OpenMSIStream does.
    ``relative_filepath`` (``subdir_str/filename``, posix) is not checked for
    safety here; steps that write or upload check it with
    :func:`omsd.wire.paths.safe_relative_path`.
    """

    def __init__(
        self,
        *,
        staged_path: str,
        size: int,
        subdir_str: str,
        filename: str,
        file_hash: bytes,
        file_mtime: float | None,
        topic: str,
        filename_append: str = "",
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative int, got {size!r}")
        self._staged_path = os.fspath(staged_path)
        self._size = size
        self._subdir_str = subdir_str or ""
        self._original_filename = filename
        self._filename_append = filename_append or ""
        self._filename = apply_filename_append(filename, self._filename_append)
        self._file_hash = bytes(file_hash)
        self._file_mtime = float(file_mtime) if file_mtime and file_mtime > 0 else None
        self._topic = topic
        self._full_filepath: Path | None = None
        self._bytestring: bytes | None = None
        self._prepared: dict[str, str] = {}  # target -> temporary copy written ahead (see save's prepare)
        self._prepared_roots: dict[str, str] = {}  # save root -> its prepared target
        self._unsynced: list[str | Path] = []  # files written by steps and not yet made durable

    # ---- identity -------------------------------------------------------

    @property
    def filename(self) -> str:
        """The file's name (with ``filename_append`` applied)."""
        return self._filename

    @property
    def original_filename(self) -> str:
        """The file name exactly as it travelled in the messages."""
        return self._original_filename

    @property
    def filename_append(self) -> str:
        """OpenMSIStream's ``filename_append`` (usually empty)."""
        return self._filename_append

    @property
    def subdir_str(self) -> str:
        """The ``/``-separated subdirectory relative to the upload root ("" at the root)."""
        return self._subdir_str

    @property
    def relative_filepath(self) -> str:
        """``subdir_str/filename`` as a posix string (just ``filename`` at the root)."""
        if self._subdir_str:
            return f"{self._subdir_str}/{self._filename}"
        return self._filename

    @property
    def relative_path(self) -> PurePosixPath:
        """:attr:`relative_filepath` as a :class:`~pathlib.PurePosixPath`."""
        return PurePosixPath(self.relative_filepath)

    @property
    def size(self) -> int:
        """The file's length in bytes."""
        return self._size

    @property
    def file_hash(self) -> bytes:
        """The raw 64-byte sha512 of the whole file (already verified)."""
        return self._file_hash

    @property
    def check_file_hash(self) -> bytes:
        """OpenMSIStream's name for the hash of the received data (verified, same as file_hash)."""
        return self._file_hash

    @property
    def file_mtime(self) -> float | None:
        """The file's modification time at the uploader, or None when unknown."""
        return self._file_mtime

    @property
    def topic(self) -> str:
        """The topic the file's chunks were read from."""
        return self._topic

    @property
    def staged_path(self) -> str:
        """Path of the staging file holding the bytes (only the first ``size`` bytes count)."""
        return self._staged_path

    # ---- location on disk -----------------------------------------------

    @property
    def full_filepath(self) -> Path | None:
        """Where a ``save`` step wrote the file, or None while it is not saved."""
        return self._full_filepath

    @full_filepath.setter
    def full_filepath(self, value: str | os.PathLike[str] | None) -> None:
        self._full_filepath = None if value is None else Path(value)

    @property
    def filepath(self) -> Path:
        """The saved path once saved, else the relative path (OpenMSIStream's ``filepath``)."""
        if self._full_filepath is not None:
            return self._full_filepath
        return Path(self.relative_filepath)

    # ---- content --------------------------------------------------------

    @property
    def bytestring(self) -> bytes:
        """The whole file as bytes.

        The first access reads the entire file into this process's memory and
        keeps it until :meth:`release`; prefer :meth:`open` or
        :meth:`iter_blocks` for large files.
        """
        if self._bytestring is None:
            with self.open() as handle:
                data = handle.read(self._size) if self._size else b""
            if len(data) != self._size:
                raise OSError(
                    f"{self._staged_path}: expected {self._size} bytes, could read only {len(data)}"
                )
            self._bytestring = data
        return self._bytestring

    def open(self) -> BinaryIO:
        """Open the file's content (the staged bytes) for reading.

        The stream is seekable and ends after ``size`` bytes.
        """
        raw = _BoundedFile(self._staged_path, self._size)
        return io.BufferedReader(raw, buffer_size=1024 * 1024)  # type: ignore[return-value]

    def iter_blocks(self, block: int = DEFAULT_BLOCK) -> Iterator[bytes]:
        """Yield the file's content in blocks of at most ``block`` bytes."""
        if block <= 0:
            raise ValueError("block must be positive")
        with self.open() as handle:
            while True:
                data = handle.read(block)
                if not data:
                    return
                yield data

    def release(self) -> None:
        """Drop the cached :attr:`bytestring`, if any."""
        self._bytestring = None

    def hold_verified(self, content: bytes) -> None:
        """The file's whole content, already read and verified by the worker: kept as :attr:`bytestring`."""
        if len(content) != self._size:
            raise ValueError(f"{len(content)} bytes held for a file of {self._size}")
        self._bytestring = content

    @property
    def content_in_memory(self) -> bytes | None:
        """The whole content if this process holds it already (see :meth:`hold_verified`), else None."""
        return self._bytestring

    # ---- copies written ahead of verification (the save step's prepare) ----

    def add_prepared(self, target: str, temp: str, root: str | None = None) -> None:
        """``temp`` holds this file's bytes for ``target`` (checked to lie under ``root``)."""
        self._prepared[target] = temp
        if root is not None:
            self._prepared_roots[root] = target

    def prepared_target(self, root: str) -> str | None:
        """The target a copy was prepared for under ``root`` (its path checked when it was prepared)."""
        target = self._prepared_roots.get(root)
        return target if target in self._prepared else None

    def take_prepared(self, target: str) -> str | None:
        """The temporary copy prepared for ``target``, handed over once."""
        return self._prepared.pop(target, None)

    def discard_prepared(self) -> None:
        """Remove every prepared copy not taken (the hash failed, or no step used it)."""
        for temp in self._prepared.values():
            try:
                os.unlink(temp)
            except OSError:
                pass
        self._prepared.clear()
        self._prepared_roots.clear()

    # ---- files written and not yet durable (see workers.durability) ----------------------------

    def note_unsynced(self, path: str | Path) -> None:
        """A step wrote ``path`` without fsync: the worker makes it durable before reporting the file."""
        self._unsynced.append(path)

    def take_unsynced(self) -> list[str | Path]:
        """The files written since the last call, handed over once."""
        out, self._unsynced = self._unsynced, []
        return out

    def __repr__(self) -> str:
        return (
            f"DataFile(relative_filepath={self.relative_filepath!r}, size={self._size}, "
            f"topic={self._topic!r}, full_filepath={self._full_filepath!r})"
        )
