"""Unit tests for omsd.wire.protocol: the OpenMSIStream 1.8 chunk format, checked against the real package."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest
from openmsistream.data_file_io.entity.data_file_chunk import DataFileChunk
from openmsistream.data_file_io.utilities import get_message_prepend
from openmsistream.kafka_wrapper.serialization import DataFileChunkDeserializer, DataFileChunkSerializer

from omsd.wire.protocol import (
    COPY_DECODE_MAX,
    DEFAULT_MAX_FILE_SIZE,
    EMPTY_SHA512,
    HASH_LEN,
    Chunk,
    ProtocolError,
    chunk_key,
    decode_chunk,
    encode_chunk,
    result_key,
)

DATA = b"some bytes of a lab data file\x00\xff" * 7
DATA_HASH = hashlib.sha512(DATA).digest()
FILE_HASH = hashlib.sha512(b"the whole file").digest()


def fields(**overrides: Any) -> list[Any]:
    """A valid ten-field message value as a list, with some fields replaced."""
    value = {
        "filename": "scan 01.dat",
        "file_hash": FILE_HASH,
        "chunk_hash": DATA_HASH,
        "offset": 1024,
        "chunk_i": 2,
        "n_total_chunks": 3,
        "subdir_str": "run1/day2",
        "filename_append": "",
        "data": DATA,
        "file_mtime": 1700000000.5,
    }
    value.update(overrides)
    return list(value.values())


def pack(values: Any) -> bytes:
    return msgpack.packb(values, use_bin_type=True)


def reject(value: bytes | None, reason: str, **kwargs: Any) -> ProtocolError:
    """Assert decode_chunk refuses ``value`` with ProtocolError of the given reason."""
    with pytest.raises(ProtocolError) as info:
        decode_chunk(value, **kwargs)
    assert type(info.value) is ProtocolError
    assert info.value.reason == reason, info.value
    assert info.value.detail
    return info.value


def oms_chunk(
    *,
    subdir: str,
    filename: str,
    data: bytes,
    offset: int,
    chunk_i: int,
    n_total: int,
    file_hash: bytes = FILE_HASH,
    filename_append: str = "",
    file_mtime: float | None = None,
) -> DataFileChunk:
    """An OpenMSIStream DataFileChunk as its uploader builds one (file under an upload root)."""
    root = Path("/upload/root")
    filepath = root.joinpath(*subdir.split("/"), filename) if subdir else root / filename
    return DataFileChunk(
        filepath,
        filename,
        file_hash,
        hashlib.sha512(data).digest(),
        offset,
        offset,
        len(data),
        chunk_i,
        n_total,
        rootdir=root,
        filename_append=filename_append,
        data=data,
        file_mtime=file_mtime,
    )


# --------------------------------------------------------------------------- round trips


def test_round_trip_ten_fields() -> None:
    value = encode_chunk(
        filename="scan 01.dat", file_hash=FILE_HASH, data=DATA, offset=1024, chunk_i=2,
        n_total_chunks=3, subdir_str="run1/day2", file_mtime=1700000000.5,
    )
    assert len(msgpack.unpackb(value)) == 10
    chunk = decode_chunk(value)
    assert chunk == Chunk(
        filename="scan 01.dat", file_hash=FILE_HASH, chunk_hash=DATA_HASH, offset=1024, chunk_i=2,
        n_total_chunks=3, subdir_str="run1/day2", filename_append="", data=DATA, file_mtime=1700000000.5,
    )
    assert chunk.relative_path == "run1/day2/scan 01.dat"
    assert chunk.end == 1024 + len(DATA)


def test_root_file_relative_path_is_the_filename() -> None:
    chunk = decode_chunk(pack(fields(subdir_str="")))
    assert chunk.relative_path == "scan 01.dat"


def test_legacy_nine_field_value_is_read_without_mtime() -> None:
    chunk = decode_chunk(pack(fields()[:9]))
    assert chunk.file_mtime is None
    assert chunk.data == DATA
    assert chunk.chunk_i == 2 and chunk.n_total_chunks == 3


@pytest.mark.parametrize("mtime", [0.0, 0])
def test_zero_mtime_means_unknown(mtime: float) -> None:
    assert decode_chunk(pack(fields(file_mtime=mtime))).file_mtime is None


def test_integer_mtime_is_read_as_float() -> None:
    chunk = decode_chunk(pack(fields(file_mtime=1700000000)))
    assert chunk.file_mtime == 1700000000.0
    assert isinstance(chunk.file_mtime, float)


def test_encode_without_mtime_writes_zero() -> None:
    value = encode_chunk(filename="a", file_hash=FILE_HASH, data=DATA, offset=0, chunk_i=1, n_total_chunks=1)
    assert msgpack.unpackb(value)[9] == 0.0
    assert decode_chunk(value).file_mtime is None


def test_encode_accepts_memoryview_and_precomputed_hash() -> None:
    value = encode_chunk(
        filename="a", file_hash=FILE_HASH, data=memoryview(DATA), offset=0, chunk_i=1,
        n_total_chunks=1, chunk_hash=DATA_HASH,
    )
    assert decode_chunk(value).data == DATA


def test_empty_file_is_one_empty_chunk() -> None:
    value = encode_chunk(filename="empty", file_hash=EMPTY_SHA512, data=b"", offset=0, chunk_i=1, n_total_chunks=1)
    chunk = decode_chunk(value)
    assert chunk.data == b"" and chunk.chunk_hash == EMPTY_SHA512 and chunk.end == 0


def test_filename_append_round_trips() -> None:
    chunk = decode_chunk(pack(fields(filename_append="_v2")))
    assert chunk.filename_append == "_v2"


def test_bin_typed_strings_from_old_producers_are_read() -> None:
    raw = fields()
    raw[0], raw[6] = raw[0].encode(), raw[6].encode()
    chunk = decode_chunk(pack(raw))
    assert chunk.filename == "scan 01.dat" and chunk.subdir_str == "run1/day2"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    value = pack(fields())
    assert decode_chunk(bytearray(value)) == decode_chunk(value) == decode_chunk(memoryview(value))


@pytest.mark.parametrize("size", [1, COPY_DECODE_MAX - 300, COPY_DECODE_MAX + 1, 3 * COPY_DECODE_MAX])
def test_a_large_chunk_is_decoded_in_place_and_a_small_one_by_msgpack(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    value = encode_chunk(filename="a", file_hash=FILE_HASH, data=data, offset=0, chunk_i=1, n_total_chunks=1)
    chunk = decode_chunk(value)
    assert bytes(chunk.data) == data and chunk.chunk_hash == hashlib.sha512(data).digest()
    # Data of a large value is a view into it (no copy); a small one is copied, which costs less than parsing.
    assert isinstance(chunk.data, memoryview) is (len(value) > COPY_DECODE_MAX)


# --------------------------------------------------------------------------- OpenMSIStream as the peer

PEER_CASES = [
    # subdir, filename, data, offset, chunk_i, n_total, filename_append, mtime
    ("", "root_file.dat", DATA, 0, 1, 1, "", None),
    ("", "with space é.bin", DATA, 524288, 2, 5, "", 1712345678.25),
    ("a", "x.csv", b"", 0, 1, 1, "", None),
    ("deep/nested/sub dir", "file.tar.gz", DATA * 3, 1048576, 3, 9, "_copy", 1.5),
    ("ünïcødé/子目录", "数据.h5", bytes(range(256)), 7, 1, 2, "", 1699999999.0),
]


@pytest.mark.parametrize("subdir,filename,data,offset,chunk_i,n_total,append,mtime", PEER_CASES)
def test_encode_is_byte_identical_to_openmsistream(
    subdir: str, filename: str, data: bytes, offset: int, chunk_i: int, n_total: int, append: str, mtime: float | None,
) -> None:
    theirs = DataFileChunkSerializer()(oms_chunk(
        subdir=subdir, filename=filename, data=data, offset=offset, chunk_i=chunk_i, n_total=n_total,
        filename_append=append, file_mtime=mtime,
    ))
    ours = encode_chunk(
        filename=filename, file_hash=FILE_HASH, data=data, offset=offset, chunk_i=chunk_i,
        n_total_chunks=n_total, subdir_str=subdir, filename_append=append, file_mtime=mtime,
    )
    assert ours == theirs


@pytest.mark.parametrize("subdir,filename,data,offset,chunk_i,n_total,append,mtime", PEER_CASES)
def test_openmsistream_reads_our_bytes(
    subdir: str, filename: str, data: bytes, offset: int, chunk_i: int, n_total: int, append: str, mtime: float | None,
) -> None:
    ours = encode_chunk(
        filename=filename, file_hash=FILE_HASH, data=data, offset=offset, chunk_i=chunk_i,
        n_total_chunks=n_total, subdir_str=subdir, filename_append=append, file_mtime=mtime,
    )
    got = DataFileChunkDeserializer()(ours)
    assert isinstance(got, DataFileChunk)
    assert got.filename == filename
    assert got.file_hash == FILE_HASH
    assert got.chunk_hash == hashlib.sha512(data).digest()
    assert got.chunk_offset_write == offset
    assert got.chunk_i == chunk_i and got.n_total_chunks == n_total
    assert got.subdir_str == subdir
    assert got.filename_append == append
    assert got.data == data
    assert got.file_mtime == mtime


@pytest.mark.parametrize("subdir,filename,data,offset,chunk_i,n_total,append,mtime", PEER_CASES)
def test_we_read_openmsistream_bytes(
    subdir: str, filename: str, data: bytes, offset: int, chunk_i: int, n_total: int, append: str, mtime: float | None,
) -> None:
    theirs = DataFileChunkSerializer()(oms_chunk(
        subdir=subdir, filename=filename, data=data, offset=offset, chunk_i=chunk_i, n_total=n_total,
        filename_append=append, file_mtime=mtime,
    ))
    chunk = decode_chunk(theirs)
    assert (chunk.filename, chunk.subdir_str, chunk.offset, chunk.chunk_i, chunk.n_total_chunks) == (
        filename, subdir, offset, chunk_i, n_total)
    assert chunk.data == data and chunk.file_hash == FILE_HASH and chunk.file_mtime == mtime
    assert chunk.filename_append == append


@pytest.mark.parametrize("subdir,filename", [
    ("", "root_file.dat"),
    ("a", "b.txt"),
    ("deep/nested/sub dir", "file.tar.gz"),
    ("ünïcødé", "数据.h5"),
    ("with_underscores/in_parts", "name_with_chunk_1_of_2"),
])
@pytest.mark.parametrize("chunk_i,n_total", [(1, 1), (3, 17)])
def test_keys_match_openmsistream(subdir: str, filename: str, chunk_i: int, n_total: int) -> None:
    theirs = oms_chunk(subdir=subdir, filename=filename, data=b"x", offset=0, chunk_i=chunk_i, n_total=n_total)
    assert theirs.subdir_str == subdir  # the peer sees the same subdir we put in the message
    assert chunk_key(subdir, filename, chunk_i, n_total) == theirs.msg_key
    assert result_key(subdir, filename) == f"{get_message_prepend(subdir, filename)}_processing_result"


def test_key_shapes() -> None:
    assert chunk_key("a/b", "f.dat", 2, 5) == "a_b_f.dat_chunk_2_of_5"
    assert result_key("a/b", "f.dat") == "a_b_f.dat_chunk_processing_result"
    # OpenMSIStream keeps a leading "_" for a file at the upload root.
    assert chunk_key("", "f.dat", 1, 1) == "_f.dat_chunk_1_of_1"


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("value", [None, b""])
def test_missing_value(value: bytes | None) -> None:
    reject(value, "empty")


@pytest.mark.parametrize("value", [
    b"\xc1",                       # never-used msgpack byte
    b"\x93\x01",                   # truncated array
    b"\xdd\xff\xff\xff\xff",       # array claiming 4 billion items
    b"\x91" * 200_000,             # nesting deeper than any stack
    pack(fields()) + b"\x00",      # trailing bytes
    b"\xda\x00\x02\xff\xfe",       # str that is not utf-8
    b"hello, world",
])
def test_garbage_bytes(value: bytes) -> None:
    reject(value, "undecodable")


@pytest.mark.parametrize("value", [
    pack({"filename": "a"}),
    pack(7),
    pack("a string"),
    pack(b"bytes"),
    pack(None),
    pack(1.5),
    msgpack.packb(msgpack.ExtType(5, b"abc")),
])
def test_not_an_array(value: bytes) -> None:
    reject(value, "bad_shape")


@pytest.mark.parametrize("n", [0, 1, 8, 11, 12])
def test_wrong_field_count(n: int) -> None:
    values = (fields() + ["extra", "more"])[:n]
    reject(pack(values), "bad_shape")


BAD_FIELDS = [
    # (field name, bad value)
    ("filename", 5),
    ("filename", None),
    ("filename", ["a"]),
    ("filename", b"\xff\xfe not utf-8"),
    ("file_hash", "a" * HASH_LEN),
    ("file_hash", FILE_HASH[:32]),
    ("file_hash", FILE_HASH + b"\x00"),
    ("file_hash", b""),
    ("file_hash", None),
    ("chunk_hash", DATA_HASH.hex()),
    ("chunk_hash", DATA_HASH[:-1]),
    ("chunk_hash", 0),
    ("offset", True),
    ("offset", 10.0),
    ("offset", "1024"),
    ("offset", None),
    ("chunk_i", True),
    ("chunk_i", 2.0),
    ("chunk_i", "2"),
    ("n_total_chunks", False),
    ("n_total_chunks", 3.0),
    ("n_total_chunks", [3]),
    ("subdir_str", 1),
    ("subdir_str", None),
    ("filename_append", 0),
    ("filename_append", None),
    ("data", "text is not bytes"),
    ("data", None),
    ("data", 12),
    ("data", [1, 2]),
    ("file_mtime", "1700000000"),
    ("file_mtime", True),
    ("file_mtime", None),
    ("file_mtime", b"\x00"),
    ("file_mtime", math.nan),
    ("file_mtime", math.inf),
    ("file_mtime", -math.inf),
    ("file_mtime", -1.0),
    ("file_mtime", -5),
]


@pytest.mark.parametrize("name,bad", BAD_FIELDS, ids=[f"{n}={b!r:.20}" for n, b in BAD_FIELDS])
def test_wrong_field_type(name: str, bad: Any) -> None:
    reject(pack(fields(**{name: bad})), "bad_field")


@pytest.mark.parametrize("name,bad", [(n, b) for n, b in BAD_FIELDS if n != "file_mtime"])
def test_wrong_field_type_in_legacy_value(name: str, bad: Any) -> None:
    reject(pack(fields(**{name: bad})[:9]), "bad_field")


def test_chunk_hash_mismatch() -> None:
    reject(pack(fields(chunk_hash=hashlib.sha512(b"other").digest())), "chunk_hash_mismatch")
    reject(pack(fields(data=DATA[:-1])), "chunk_hash_mismatch")


@pytest.mark.parametrize("n_total,chunk_i", [(0, 1), (0, 0), (-1, 1), (-(2**63), 1)])
def test_n_total_chunks_not_positive(n_total: int, chunk_i: int) -> None:
    reject(pack(fields(n_total_chunks=n_total, chunk_i=chunk_i)), "bad_range")


@pytest.mark.parametrize("chunk_i", [0, -1, 4, 2**63 - 1])
def test_chunk_i_out_of_range(chunk_i: int) -> None:
    reject(pack(fields(chunk_i=chunk_i, n_total_chunks=3)), "bad_range")


def test_absurd_n_total_chunks() -> None:
    reject(pack(fields(n_total_chunks=DEFAULT_MAX_FILE_SIZE + 1)), "too_large")
    reject(pack(fields(n_total_chunks=2**64 - 1)), "too_large")
    reject(pack(fields(n_total_chunks=101, chunk_i=1, offset=0)), "too_large", max_file_size=100)


@pytest.mark.parametrize("offset", [-1, -(2**63)])
def test_negative_offset(offset: int) -> None:
    reject(pack(fields(offset=offset)), "bad_range")


def test_offset_beyond_limit() -> None:
    reject(pack(fields(offset=DEFAULT_MAX_FILE_SIZE)), "too_large")
    reject(pack(fields(offset=2**64 - 1)), "too_large")


def test_max_file_size_is_configurable() -> None:
    value = pack(fields(offset=1024))  # chunk ends at 1024 + len(DATA)
    end = 1024 + len(DATA)
    assert decode_chunk(value, max_file_size=end).end == end
    reject(value, "too_large", max_file_size=end - 1)
    empty = pack(fields(offset=0, chunk_i=1, n_total_chunks=1, data=b"", chunk_hash=EMPTY_SHA512))
    assert decode_chunk(empty, max_file_size=0).data == b""


def test_empty_data_only_for_a_one_chunk_file_at_offset_zero() -> None:
    reject(pack(fields(data=b"", chunk_hash=EMPTY_SHA512)), "bad_range")  # chunk 2 of 3
    reject(pack(fields(data=b"", chunk_hash=EMPTY_SHA512, chunk_i=1, n_total_chunks=1, offset=5)), "bad_range")


UNSAFE_SUBDIRS = [
    "/etc", "/", "//server/share", "..", "../x", "a/../../b", "a/..", ".", "./a", "a/./b",
    "a//b", "a/", "a\x00b", "a\\b", "..\\..\\windows", "x/" + "d" * 256, "/".join(["abcdefgh"] * 600),
]
UNSAFE_FILENAMES = [
    "", ".", "..", "/etc/passwd", "a/b", "../x", "x\x00.dat", "x\\y", "..\\evil", "n" * 256, "é" * 128,
]


@pytest.mark.parametrize("subdir", UNSAFE_SUBDIRS)
def test_unsafe_subdir(subdir: str) -> None:
    reject(pack(fields(subdir_str=subdir)), "unsafe_path")


@pytest.mark.parametrize("filename", UNSAFE_FILENAMES)
def test_unsafe_filename(filename: str) -> None:
    reject(pack(fields(filename=filename)), "unsafe_path")


@pytest.mark.parametrize("append", ["/../../x", "/x", "a/b", "\\x", "x\x00", "a" * 255])
def test_unsafe_filename_append(append: str) -> None:
    """filename_append becomes part of the saved name, so it must not add a path or overflow the name."""
    reject(pack(fields(filename_append=append)), "unsafe_path")


def test_longest_acceptable_names() -> None:
    chunk = decode_chunk(pack(fields(filename="n" * 255, subdir_str="/".join(["d" * 255] * 15))))
    assert len(chunk.relative_path) == 16 * 255 + 15


def test_protocol_error_is_a_value_error_with_reason_and_detail() -> None:
    err = reject(pack(fields(filename="..")), "unsafe_path")
    assert isinstance(err, ValueError)
    assert str(err).startswith("unsafe_path: ")
