"""Property-based tests (hypothesis) for the chunk decoder and path safety."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openmsistream.data_file_io.entity.data_file_chunk import DataFileChunk
from openmsistream.kafka_wrapper.serialization import DataFileChunkSerializer

from omsd.wire.paths import UnsafePathError, resolve_under, safe_relative_path
from omsd.wire.protocol import EMPTY_SHA512, Chunk, ProtocolError, decode_chunk, encode_chunk, relative_path

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty output root shared by the examples of one property (nothing is written to it)."""
    root = tmp_path_factory.mktemp("out") / "root"
    root.mkdir()
    yield root
    assert list(root.iterdir()) == []


def decode_or_protocol_error(value: Any) -> Chunk | None:
    """decode_chunk's only allowed outcomes: a Chunk, or ProtocolError (returned as None)."""
    try:
        chunk = decode_chunk(value)
    except ProtocolError as exc:
        assert type(exc) is ProtocolError and exc.reason and exc.detail
        return None
    assert isinstance(chunk, Chunk)
    return chunk


# --------------------------------------------------------------------------- strategies

# Any value msgpack can encode (what a hostile producer can put in a field).
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)

# Components that probe the path checks, mixed with arbitrary text.
path_atoms = st.sampled_from(["", ".", "..", "a", "b c", "/", "\\", "\x00", "~", "...", "é", "x" * 256]) | st.text(
    max_size=12)
path_texts = st.lists(path_atoms, max_size=5).map("/".join) | st.text(max_size=30)

# Name components that decode_chunk must accept.
NAME_ALPHABET = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00")
safe_names = st.text(NAME_ALPHABET, min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))
safe_subdirs = st.lists(safe_names, max_size=4).map("/".join)
hashes = st.binary(min_size=64, max_size=64)
mtimes = st.just(0.0) | st.floats(min_value=0.0, max_value=4e9, allow_nan=False, allow_infinity=False)


# Nine or ten fields, each any msgpack value.
field_lists = st.lists(msgpack_values, min_size=9, max_size=10)


@st.composite
def valid_chunks(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(st.binary(max_size=2048))
    if data:
        n_total = draw(st.integers(min_value=1, max_value=10_000))
        chunk_i = draw(st.integers(min_value=1, max_value=n_total))
        offset = draw(st.integers(min_value=0, max_value=2**40 - len(data)))
    else:
        n_total, chunk_i, offset = 1, 1, 0
    return {
        "filename": draw(safe_names),
        "file_hash": draw(hashes),
        "data": data,
        "offset": offset,
        "chunk_i": chunk_i,
        "n_total_chunks": n_total,
        "subdir_str": draw(safe_subdirs),
        "filename_append": draw(st.just("") | st.text(NAME_ALPHABET, max_size=10)),
        "file_mtime": draw(mtimes),
    }


@st.composite
def damaged_field_lists(draw: st.DrawFn) -> list[Any]:
    """A valid chunk's nine or ten fields with one to three replaced by any msgpack value or an edge value."""
    chunk = draw(valid_chunks())
    values = msgpack.unpackb(encode_chunk(**chunk))
    if draw(st.booleans()):
        values = values[:9]
    edges = st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, 1 << 40, (1 << 40) + 1, 0.0, -0.0,
                             float("nan"), float("inf"), True, "", "..", "/", b"", b"\x00" * 64])
    order = draw(st.permutations(range(len(values))))
    for index in order[:draw(st.integers(min_value=1, max_value=3))]:
        values[index] = draw(msgpack_values | edges | path_texts)
    return values


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes overwritten, inserted or cut."""
    value = bytearray(encode_chunk(**draw(valid_chunks())))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(value)))
        action = draw(st.sampled_from(["set", "insert", "cut"]))
        if action == "set" and at < len(value):
            value[at] = draw(st.integers(0, 255))
        elif action == "insert":
            value[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del value[at:at + draw(st.integers(1, 8))]
    return bytes(value)


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_protocol_error(value: bytes) -> None:
    decode_or_protocol_error(value)


@SETTINGS
@given(mutated_messages())
def test_corrupted_messages_decode_or_raise_protocol_error(value: bytes) -> None:
    decode_or_protocol_error(value)


@SETTINGS
@given(field_lists)
def test_arbitrary_field_lists_decode_or_raise_protocol_error(values: list[Any]) -> None:
    decode_or_protocol_error(msgpack.packb(values, use_bin_type=True))


@SETTINGS
@given(damaged_field_lists())
def test_damaged_field_lists_decode_or_raise_protocol_error(values: list[Any]) -> None:
    chunk = decode_or_protocol_error(msgpack.packb(values, use_bin_type=True))
    if chunk is not None:  # whatever got through is still a sane, safe chunk
        assert 1 <= chunk.chunk_i <= chunk.n_total_chunks
        assert 0 <= chunk.offset <= chunk.end <= 1 << 40
        assert chunk.chunk_hash == hashlib.sha512(chunk.data).digest()
        assert chunk.file_mtime is None or chunk.file_mtime > 0
        safe_relative_path(chunk.subdir_str, chunk.filename + chunk.filename_append)


@SETTINGS
@given(valid_chunks())
def test_valid_chunks_round_trip_exactly(fields: dict[str, Any]) -> None:
    value = encode_chunk(**fields)
    chunk = decode_chunk(value)
    expected_mtime = fields["file_mtime"] or None
    assert chunk == Chunk(
        filename=fields["filename"], file_hash=fields["file_hash"],
        chunk_hash=hashlib.sha512(fields["data"]).digest(), offset=fields["offset"],
        chunk_i=fields["chunk_i"], n_total_chunks=fields["n_total_chunks"], subdir_str=fields["subdir_str"],
        filename_append=fields["filename_append"], data=fields["data"], file_mtime=expected_mtime,
    )
    if not fields["data"]:
        assert chunk.chunk_hash == EMPTY_SHA512
    assert encode_chunk(**fields, chunk_hash=chunk.chunk_hash) == value


@SETTINGS
@given(valid_chunks())
def test_valid_chunks_encode_like_openmsistream(fields: dict[str, Any]) -> None:
    root = Path("/upload")
    filepath = root.joinpath(*fields["subdir_str"].split("/"), fields["filename"]) if fields["subdir_str"] \
        else root / fields["filename"]
    theirs = DataFileChunk(
        filepath, fields["filename"], fields["file_hash"], hashlib.sha512(fields["data"]).digest(),
        fields["offset"], fields["offset"], len(fields["data"]), fields["chunk_i"], fields["n_total_chunks"],
        rootdir=root, filename_append=fields["filename_append"], data=fields["data"],
        file_mtime=fields["file_mtime"] or None,
    )
    assert encode_chunk(**fields) == DataFileChunkSerializer()(theirs)


@SETTINGS
@given(subdir=path_texts | safe_subdirs, filename=path_texts | safe_names, append=st.just("") | path_texts)
def test_accepted_paths_resolve_inside_the_root(out_root: Path, subdir: str, filename: str, append: str) -> None:
    data = b"x"
    value = encode_chunk(filename=filename, file_hash=hashlib.sha512(data).digest(), data=data, offset=0,
                         chunk_i=1, n_total_chunks=1, subdir_str=subdir, filename_append=append)
    chunk = decode_or_protocol_error(value)
    if chunk is None:
        return
    target = resolve_under(out_root, chunk.relative_path)
    assert target.is_relative_to(out_root.resolve())
    assert target != out_root.resolve()
    assert target.relative_to(out_root.resolve()).as_posix() == chunk.relative_path
    with_append = resolve_under(out_root, f"{chunk.relative_path}{chunk.filename_append}")
    assert with_append.parent == target.parent


@SETTINGS
@given(subdir=path_texts | st.text(), filename=path_texts | st.text())
def test_safe_relative_path_refuses_or_returns_a_plain_relative_path(subdir: str, filename: str) -> None:
    try:
        rel = safe_relative_path(subdir, filename)
    except UnsafePathError:
        return
    assert not rel.is_absolute()
    assert rel.parts, "an accepted path names a file"
    for part in rel.parts:
        assert part not in ("", ".", "..")
        assert "\x00" not in part and "\\" not in part and "/" not in part
    assert rel.name == filename
    # Nothing was silently normalised away: the path is exactly what the message said.
    assert str(rel) == (f"{subdir}/{filename}" if subdir else filename)


@SETTINGS
@given(subdir=path_texts | st.text(alphabet="./ab"), filename=path_texts | st.text(alphabet="./ab"))
def test_relative_path_is_what_purepath_makes_of_the_two_names(subdir: str, filename: str) -> None:
    # The plain join stands in for PurePosixPath only where both agree: for any pair of strings.
    expected = str(PurePosixPath(subdir, filename)) if subdir else filename
    assert relative_path.__wrapped__(subdir, filename) == expected
