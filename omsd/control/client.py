"""Blocking client of the control socket, used by ``omsctl`` and tests."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from omsd.control.protocol import (
    MAX_REPLY_BYTES,
    ControlError,
    FrameDecoder,
    Framing,
    ProtocolError,
    decode,
    encode,
)


class DaemonNotRunning(ControlError):
    """No daemon listens on the control socket (missing file or connection refused)."""


class ControlTimeout(ControlError, TimeoutError):
    """The daemon accepted the connection but did not answer in time."""


class ControlClient:
    """Sends one request per connection and waits for the reply."""

    def __init__(self, path: str | Path, timeout: float = 5.0,
                 framing: Framing = Framing.LENGTH) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.framing = framing

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **args}`` and return the reply object.

        Raises ``DaemonNotRunning``, ``ControlTimeout`` or ``ProtocolError``.
        """
        message = {"cmd": cmd, **args}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonNotRunning(f"no daemon on {self.path}: {exc.strerror}") from None
            except TimeoutError:
                raise ControlTimeout(f"connecting to {self.path} timed out") from None
            try:
                sock.sendall(encode(message, self.framing))
                return self._read_reply(sock)
            except TimeoutError:
                raise ControlTimeout(
                    f"no reply to {cmd!r} from {self.path} within {self.timeout:g} s") from None

    def _read_reply(self, sock: socket.socket) -> dict[str, Any]:
        decoder = FrameDecoder(max_bytes=MAX_REPLY_BYTES)
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                return decode(frame[1])
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                frame = decoder.finish()
                if frame is not None:
                    return decode(frame[1])
                raise ProtocolError(f"{self.path} closed the connection without a reply")
            decoder.feed(data)
