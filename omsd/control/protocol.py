"""Framing of control-socket messages, shared by the server and the client.

Every request and reply is one JSON object, framed either as

* newline-delimited JSON: ``{"cmd": "status"}\\n``, or
* length-prefixed JSON: a 4-byte big-endian payload length, then the payload.

The server tells them apart by the first byte of each request: a printable
ASCII character (``{``) after optional whitespace means a line; anything else
begins a length prefix (whose first byte is 0 for any allowed size). A reply
uses the framing of the request it answers.
"""

from __future__ import annotations

import json
import struct
from enum import Enum
from typing import Any, Mapping

DEFAULT_MAX_REQUEST_BYTES = 65536
MAX_REPLY_BYTES = 64 * 1024 * 1024

_PREFIX = struct.Struct(">I")
_WHITESPACE = b" \t\r\n"


class Framing(str, Enum):
    """How one message is delimited on the stream."""

    NEWLINE = "newline"
    LENGTH = "length"


class ControlError(Exception):
    """Base of control-socket errors."""


class ProtocolError(ControlError):
    """A frame or payload that is not a valid control message."""


class FrameTooLarge(ProtocolError):
    """A frame longer than the allowed size; the stream cannot be resynchronised."""

    def __init__(self, message: str, framing: Framing) -> None:
        super().__init__(message)
        self.framing = framing


def encode(message: Mapping[str, Any], framing: Framing = Framing.LENGTH) -> bytes:
    """Serialise ``message`` as one frame. Unknown types are sent as ``str()``."""
    payload = json.dumps(dict(message), separators=(",", ":"), default=str).encode("utf-8")
    if framing is Framing.NEWLINE:
        return payload + b"\n"
    return _PREFIX.pack(len(payload)) + payload


def decode(payload: bytes) -> dict[str, Any]:
    """Parse one frame's payload; raises ``ProtocolError`` unless it is a JSON object."""
    if not payload.strip():
        raise ProtocolError("empty request")
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected a JSON object, got {type(value).__name__}")
    return value


class FrameDecoder:
    """Splits a byte stream into frames of either framing."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._scanned = 0  # bytes of an incomplete line already searched for b"\n"

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def pending(self) -> bool:
        """True when part of a frame (not just whitespace) is buffered."""
        return bool(self._buf.strip(_WHITESPACE))

    def next_frame(self) -> tuple[Framing, bytes] | None:
        """Return the next complete ``(framing, payload)``, or None if incomplete.

        Raises ``FrameTooLarge`` when a frame exceeds ``max_bytes``.
        """
        buf = self._buf
        start = 0
        while start < len(buf) and buf[start] in _WHITESPACE:
            start += 1
        if start:
            del buf[:start]
            self._scanned = max(0, self._scanned - start)
        if not buf:
            return None
        if 0x20 <= buf[0] < 0x7F:
            return self._next_line()
        return self._next_prefixed()

    def _next_line(self) -> tuple[Framing, bytes] | None:
        buf = self._buf
        end = buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(buf)
            if len(buf) > self.max_bytes:
                raise FrameTooLarge(
                    f"request exceeds {self.max_bytes} bytes without a newline", Framing.NEWLINE)
            return None
        payload = bytes(buf[:end]).rstrip(b"\r")
        del buf[: end + 1]
        self._scanned = 0
        if len(payload) > self.max_bytes:
            raise FrameTooLarge(f"request of {len(payload)} bytes exceeds {self.max_bytes}",
                                Framing.NEWLINE)
        return Framing.NEWLINE, payload

    def _next_prefixed(self) -> tuple[Framing, bytes] | None:
        buf = self._buf
        if len(buf) < _PREFIX.size:
            return None
        (length,) = _PREFIX.unpack_from(buf)
        if length > self.max_bytes:
            raise FrameTooLarge(f"request of {length} bytes exceeds {self.max_bytes}",
                                Framing.LENGTH)
        if len(buf) < _PREFIX.size + length:
            return None
        payload = bytes(buf[_PREFIX.size: _PREFIX.size + length])
        del buf[: _PREFIX.size + length]
        return Framing.LENGTH, payload

    def finish(self) -> tuple[Framing, bytes] | None:
        """At end of stream: an unterminated last line counts as a request."""
        if not self.pending:
            return None
        frame = self.next_frame()
        if frame is not None:
            return frame
        if 0x20 <= self._buf[0] < 0x7F:
            payload = bytes(self._buf).strip()
            self._buf.clear()
            self._scanned = 0
            return Framing.NEWLINE, payload
        return None
