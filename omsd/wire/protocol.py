"""The OpenMSIStream 1.8 chunk message format: encoding, decoding, keys.

One Kafka message per chunk. The value is a msgpack array (``use_bin_type``)
of ten fields — filename, file_hash, chunk_hash, chunk_offset_write, chunk_i,
n_total_chunks, subdir_str, filename_append, data, file_mtime — or nine for
older producers (no file_mtime). :func:`decode_chunk` accepts only messages
that are safe to act on; anything else raises :class:`ProtocolError` with a
short machine-readable ``reason`` and a human ``detail``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import PurePosixPath

import msgpack

from omsd.wire.paths import UnsafePathError, safe_parts
from omsd.wire.unpack import parse_fields

HASH_LEN = 64  # sha512 digest size
DEFAULT_CHUNK_SIZE = 524288
DEFAULT_MAX_FILE_SIZE = 1 << 40  # 1 TiB
# Values up to this size are decoded by msgpack (data copied), larger ones in place: msgpack takes 0.5 µs for 1–4 KiB,
# 5 µs for 16–64 KiB and 12 µs for 64–128 KiB; the in-place parser 4–5 µs whatever the size.
COPY_DECODE_MAX = 32 << 10
EMPTY_SHA512 = hashlib.sha512(b"").digest()


class ProtocolError(ValueError):
    """A chunk message that cannot be accepted.

    ``reason`` is a short stable token (for counters), ``detail`` explains it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Chunk:
    """One decoded, verified chunk of a file."""

    filename: str
    file_hash: bytes
    chunk_hash: bytes
    offset: int
    chunk_i: int
    n_total_chunks: int
    subdir_str: str
    filename_append: str
    data: bytes | memoryview  # a view into the message value when decoded
    file_mtime: float | None

    @property
    def relative_path(self) -> str:
        """The file's path relative to the upload root, posix style."""
        return relative_path(self.subdir_str, self.filename)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


# Every chunk of a file names the same path: check it once (only safe paths are cached).
_checked_path = functools.lru_cache(maxsize=4096)(safe_parts)


@functools.lru_cache(maxsize=4096)
def relative_path(subdir_str: str, filename: str) -> str:
    """``subdir_str/filename``, posix style (asked for several times per chunk, hence cached).

    The plain join when it is already in the form ``PurePosixPath`` gives (always, for the checked names
    of decoded chunks); the path object, which costs far more, only for anything else.
    """
    if not subdir_str:
        return filename
    joined = f"{subdir_str}/{filename}"
    if "//" in joined or "/./" in joined or joined.startswith("./") or joined.endswith(("/", "/.")):
        return str(PurePosixPath(subdir_str, filename))
    return joined


def message_prepend(subdir_str: str, filename: str) -> str:
    """The key prefix OpenMSIStream uses for every message about one file."""
    return f"{'_'.join(subdir_str.split('/'))}_{filename}_chunk"


def chunk_key(subdir_str: str, filename: str, chunk_i: int, n_total_chunks: int) -> str:
    """Message key of a chunk, identical to OpenMSIStream's."""
    return f"{message_prepend(subdir_str, filename)}_{chunk_i}_of_{n_total_chunks}"


def result_key(subdir_str: str, filename: str) -> str:
    """Message key of a reproducer's processing result, identical to OpenMSIStream's."""
    return f"{message_prepend(subdir_str, filename)}_processing_result"


def encode_chunk(
    *,
    filename: str,
    file_hash: bytes,
    data: bytes | memoryview,
    offset: int,
    chunk_i: int,
    n_total_chunks: int,
    subdir_str: str = "",
    filename_append: str = "",
    file_mtime: float | None = None,
    chunk_hash: bytes | None = None,
) -> bytes:
    """Serialize one chunk as a ten-field OpenMSIStream message value."""
    if chunk_hash is None:
        chunk_hash = hashlib.sha512(data).digest()
    fields = [
        filename,
        bytes(file_hash),
        bytes(chunk_hash),
        offset,
        chunk_i,
        n_total_chunks,
        subdir_str,
        filename_append,
        data if isinstance(data, bytes) else bytes(data),
        float(file_mtime) if file_mtime else 0.0,
    ]
    return msgpack.packb(fields, use_bin_type=True)


def _as_str(value: object, field: str) -> str:
    if isinstance(value, bytes):  # raw str from very old producers
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("bad_field", f"{field} is not valid utf-8") from exc
    if not isinstance(value, str):
        raise ProtocolError("bad_field", f"{field} must be a string, got {type(value).__name__}")
    return value


def _as_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("bad_field", f"{field} must be an integer, got {type(value).__name__}")
    return value


def _as_hash(value: object, field: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_LEN:
        raise ProtocolError("bad_field", f"{field} must be {HASH_LEN} raw bytes")
    return value


def decode_chunk(value: bytes | None, *, max_file_size: int = DEFAULT_MAX_FILE_SIZE,
                 verify_hash: bool = True) -> Chunk:
    """Decode and verify one chunk message value.

    Raises ProtocolError for garbage, wrong field count or types, a chunk hash
    mismatch, chunk numbers or offsets out of range, a file claimed larger
    than ``max_file_size``, or a path that could leave an output directory.
    With ``verify_hash=False`` the caller promises to call :func:`verify_chunk_hash`
    (e.g. in a thread pool: hashing releases the GIL).
    """
    if not value:
        raise ProtocolError("empty", "message value is empty or missing")
    # Small values: msgpack's C parser, whose copy of the data costs less than parsing by hand; larger
    # ones: zero-copy for the usual layout (see omsd.wire.unpack).
    fields = parse_fields(value) if len(value) > COPY_DECODE_MAX else None
    if fields is None:
        try:
            fields = msgpack.unpackb(value, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises many types for garbage
            raise ProtocolError("undecodable", f"not a msgpack value ({type(exc).__name__})") from exc
    if not isinstance(fields, (list, tuple)):
        raise ProtocolError("bad_shape", f"expected a msgpack array, got {type(fields).__name__}")
    if len(fields) not in (9, 10):
        raise ProtocolError("bad_shape", f"expected 9 or 10 fields, got {len(fields)}")

    filename = _as_str(fields[0], "filename")
    file_hash = _as_hash(fields[1], "file_hash")
    chunk_hash = _as_hash(fields[2], "chunk_hash")
    offset = _as_int(fields[3], "chunk_offset_write")
    chunk_i = _as_int(fields[4], "chunk_i")
    n_total = _as_int(fields[5], "n_total_chunks")
    subdir_str = _as_str(fields[6], "subdir_str")
    filename_append = _as_str(fields[7], "filename_append")
    data = fields[8]
    if not isinstance(data, (bytes, memoryview)):
        raise ProtocolError("bad_field", f"data must be bytes, got {type(data).__name__}")
    file_mtime: float | None = None
    if len(fields) == 10:
        raw_mtime = fields[9]
        if isinstance(raw_mtime, bool) or not isinstance(raw_mtime, (int, float)):
            raise ProtocolError("bad_field", "file_mtime must be a number")
        if not math.isfinite(raw_mtime) or raw_mtime < 0:
            raise ProtocolError("bad_field", "file_mtime must be a finite, non-negative number")
        file_mtime = float(raw_mtime) if raw_mtime > 0 else None

    if n_total < 1:
        raise ProtocolError("bad_range", f"n_total_chunks {n_total} < 1")
    if not 1 <= chunk_i <= n_total:
        raise ProtocolError("bad_range", f"chunk_i {chunk_i} outside 1..{n_total}")
    if offset < 0:
        raise ProtocolError("bad_range", f"chunk_offset_write {offset} is negative")
    if offset + len(data) > max_file_size:
        raise ProtocolError("too_large", f"chunk ends at byte {offset + len(data)}, beyond the {max_file_size}-byte limit")
    if n_total > max(1, max_file_size):
        raise ProtocolError("too_large", f"n_total_chunks {n_total} exceeds the file size limit")
    if not data and (n_total != 1 or offset != 0):
        raise ProtocolError("bad_range", "empty chunk data is only valid as the one chunk, at offset 0, of an empty file")
    try:
        _checked_path(subdir_str, filename)
    except UnsafePathError as exc:
        raise ProtocolError("unsafe_path", str(exc)) from exc
    if filename_append:
        # The saved name is stem + filename_append + suffix: the same characters and length as this.
        try:
            _checked_path(subdir_str, filename + filename_append)
        except UnsafePathError as exc:
            raise ProtocolError("unsafe_path", f"with filename_append: {exc}") from exc
    chunk = Chunk(
        filename=filename,
        file_hash=file_hash,
        chunk_hash=chunk_hash,
        offset=offset,
        chunk_i=chunk_i,
        n_total_chunks=n_total,
        subdir_str=subdir_str,
        filename_append=filename_append,
        data=data,
        file_mtime=file_mtime,
    )
    if verify_hash:
        verify_chunk_hash(chunk)
    return chunk


def verify_chunk_hash(chunk: Chunk) -> None:
    """Raise ProtocolError unless the chunk's data matches its sha512."""
    if hashlib.sha512(chunk.data).digest() != chunk.chunk_hash:
        raise ProtocolError("chunk_hash_mismatch",
                            f"chunk {chunk.chunk_i}/{chunk.n_total_chunks} of {chunk.filename!r} does not match its hash")
