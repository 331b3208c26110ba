"""The zero-copy chunk parser agrees with msgpack wherever it answers."""

from __future__ import annotations

import msgpack
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from omsd.wire.unpack import parse_fields

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(allow_nan=False), st.text(max_size=40),
    st.binary(max_size=300), st.booleans(), st.none(), st.binary(min_size=70_000, max_size=70_000),
)


def _plain(fields: list) -> list:
    return [bytes(f) if isinstance(f, memoryview) else f for f in fields]


@settings(max_examples=150, deadline=None)
@given(st.lists(scalars, min_size=9, max_size=10), st.booleans())
def test_parse_fields_matches_msgpack(fields: list, single_float: bool) -> None:
    try:
        packed = msgpack.packb(fields, use_bin_type=True, use_single_float=single_float)
    except OverflowError:
        assume(False)  # a double that float32 cannot hold
    parsed = parse_fields(packed)
    if parsed is not None:
        assert _plain(parsed) == msgpack.unpackb(packed, raw=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(scalars, min_size=9, max_size=10), st.binary(max_size=8), st.integers(min_value=0, max_value=50))
def test_truncated_or_extended_values_fall_back(fields: list, tail: bytes, cut: int) -> None:
    packed = msgpack.packb(fields, use_bin_type=True)
    if tail:
        assert parse_fields(packed + tail) is None
    if 0 < cut < len(packed):
        assert parse_fields(packed[:-cut]) is None


def test_data_field_is_a_view_not_a_copy() -> None:
    value = msgpack.packb(["f", b"h" * 64, b"c" * 64, 0, 1, 1, "", "", b"x" * 100_000, 0.0], use_bin_type=True)
    fields = parse_fields(value)
    assert fields is not None and isinstance(fields[8], memoryview) and fields[8].obj is value
    assert isinstance(fields[1], bytes)
