"""Zero-copy parsing of chunk message values in their usual msgpack layout.

The data field of a chunk is most of the message; ``msgpack.unpackb`` copies
it into a new bytes object. :func:`parse_fields` reads the common encodings
(array, str, bin, int, float) by hand and returns the data field as a
``memoryview`` into the message value instead. Anything it does not expect
returns None, and the caller falls back to ``msgpack.unpackb``, which then
accepts it or explains the error — so behaviour is exactly msgpack's.
"""

from __future__ import annotations

import struct

DATA_FIELD = 8
_FLOAT = {0xca: (">f", 4), 0xcb: (">d", 8)}
_UINT = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}
_INT = {0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8}
_STR = {0xd9: 1, 0xda: 2, 0xdb: 4}
_BIN = {0xc4: 1, 0xc5: 2, 0xc6: 4}


class _Fallback(Exception):
    """Not the usual layout: let msgpack decide."""


def _length(buf: memoryview, pos: int, size: int) -> tuple[int, int]:
    end = pos + size
    if end > len(buf):
        raise _Fallback
    return int.from_bytes(buf[pos:end], "big"), end


def _item(buf: memoryview, pos: int, keep_view: bool) -> tuple[object, int]:
    if pos >= len(buf):
        raise _Fallback
    tag = buf[pos]
    pos += 1
    if tag <= 0x7f:
        return tag, pos
    if tag >= 0xe0:
        return tag - 0x100, pos
    if 0xa0 <= tag <= 0xbf or tag in _STR:
        length, pos = (tag & 0x1f, pos) if tag <= 0xbf else _length(buf, pos, _STR[tag])
        end = pos + length
        if end > len(buf):
            raise _Fallback
        try:
            return str(buf[pos:end], "utf-8"), end
        except UnicodeDecodeError:
            raise _Fallback from None
    if tag in _BIN:
        length, pos = _length(buf, pos, _BIN[tag])
        end = pos + length
        if end > len(buf):
            raise _Fallback
        return (buf[pos:end] if keep_view else bytes(buf[pos:end])), end
    if tag in _UINT or tag in _INT:
        size = _UINT.get(tag) or _INT[tag]
        if pos + size > len(buf):
            raise _Fallback
        return int.from_bytes(buf[pos:pos + size], "big", signed=tag in _INT), pos + size
    if tag in _FLOAT:
        fmt, size = _FLOAT[tag]
        if pos + size > len(buf):
            raise _Fallback
        return struct.unpack(fmt, buf[pos:pos + size])[0], pos + size
    raise _Fallback


def parse_fields(value: bytes) -> list[object] | None:
    """The fields of a 9- or 10-field chunk array, data as a memoryview; None means "use msgpack"."""
    buf = memoryview(value)
    if not buf or buf[0] not in (0x99, 0x9a):
        return None
    n_fields = buf[0] & 0x0f
    pos = 1
    fields: list[object] = []
    try:
        for index in range(n_fields):
            item, pos = _item(buf, pos, keep_view=index == DATA_FIELD)
            fields.append(item)
    except _Fallback:
        return None
    if pos != len(buf):
        return None  # trailing bytes: msgpack reports them
    return fields
