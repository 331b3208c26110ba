"""Non-blocking control-socket server, driven by the supervisor's main loop.

``ControlServer.poll(timeout)`` accepts connections, reads whatever bytes are
ready, runs the handler of each complete request and writes replies, without
ever waiting longer than ``timeout``. A slow or half-written client only holds
its own buffer. Handlers run in the caller's thread, so they may read the
supervisor's state without locks, and must return quickly.

A handler receives the request object and returns a dict; the reply is that
dict with ``"ok": true`` added (a handler may set ``"ok": false`` itself, or
raise ``CommandError`` to reply an error without a logged traceback). Any other
exception is logged and answered with ``{"ok": false, "error": ...}``.

Connections cannot crowd an operator out: one that sends nothing for
``idle_timeout`` seconds (5) is closed, and when ``max_clients`` are open the
one that has been quiet longest is closed to admit the newcomer, so that
``omsctl check`` always gets through.
"""

from __future__ import annotations

import os
import selectors
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import structlog

from omsd.control.protocol import (
    DEFAULT_MAX_REQUEST_BYTES,
    ControlError,
    FrameDecoder,
    FrameTooLarge,
    Framing,
    ProtocolError,
    decode,
    encode,
)

log = structlog.get_logger(__name__)

Handler = Callable[[dict[str, Any]], Mapping[str, Any] | None]

_RECV_BYTES = 65536
_MAX_PENDING_REPLY_BYTES = 4 * 1024 * 1024  # stop reading a client that does not read replies
IDLE_TIMEOUT_S = 5.0  # a request is sent at once after connecting; a quiet connection only holds a slot


class ControlSocketInUse(ControlError):
    """Another process answers on the control socket path."""


class CommandError(Exception):
    """Raised by a handler to answer ``{"ok": false, "error": str(exc)}``."""


class _Client:
    __slots__ = ("sock", "decoder", "out", "closing", "last_active", "events")

    def __init__(self, sock: socket.socket, max_bytes: int, now: float) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(max_bytes)
        self.out = bytearray()
        self.closing = False  # no more reading; close once `out` is flushed
        self.last_active = now
        self.events = selectors.EVENT_READ


class ControlServer:
    """A Unix-socket JSON request/reply server polled from a single-threaded loop."""

    def __init__(
        self,
        path: str | Path,
        handlers: Mapping[str, Handler],
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_clients: int = 128,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.handlers = handlers
        self.max_request_bytes = max_request_bytes
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._clients: dict[int, _Client] = {}
        self._identity: tuple[int, int] | None = None
        self._accepting = False

    # -- life cycle ------------------------------------------------------
    def start(self) -> None:
        """Bind and listen; replaces a stale socket file, refuses a live one."""
        if self._listener is not None:
            raise RuntimeError("control server already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old_umask = os.umask(0o177)
            try:
                listener.bind(str(self.path))
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            listener.listen(128)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise OSError(exc.errno, f"cannot listen on control socket {self.path}: "
                                     f"{exc.strerror or exc}") from exc
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._accepting = True
        log.info("control socket listening", path=str(self.path))

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{self.path} exists and is not a socket; not replacing it")
        if _socket_answers(self.path):
            raise ControlSocketInUse(f"another process is listening on {self.path}")
        log.warning("removing stale control socket", path=str(self.path))
        self.path.unlink(missing_ok=True)

    def watch(self, fileobj: Any, callback: Callable[[], None]) -> None:
        """Also wake ``poll`` when ``fileobj`` is readable, calling ``callback()``.

        For the main loop's self-pipe (signal wake-up): ``poll`` then doubles as
        the loop's sleep and still returns as soon as a signal arrives. The
        callback must drain ``fileobj``.
        """
        if self._selector is None:
            raise RuntimeError("control server not started")
        self._selector.register(fileobj, selectors.EVENT_READ, callback)

    def fileno(self) -> int:
        """The listening socket's file descriptor (to wait on it in another selector)."""
        if self._listener is None:
            raise RuntimeError("control server not started")
        return self._listener.fileno()

    @property
    def listening(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._listener is not None

    @property
    def n_clients(self) -> int:
        """Connections currently open."""
        return len(self._clients)

    def close(self) -> None:
        """Close every connection; unlink the socket file if it is still ours.

        Replies not yet written get one last non-blocking send attempt.
        """
        listener, self._listener = self._listener, None
        for client in list(self._clients.values()):
            if client.out:
                try:
                    client.sock.send(client.out)
                except OSError:
                    pass
            self._drop(client)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if listener is not None:
            listener.close()
        self._accepting = False
        if self._identity is not None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink(missing_ok=True)
            self._identity = None

    def __enter__(self) -> "ControlServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- event loop --------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> None:
        """Serve whatever is ready, waiting at most ``timeout`` seconds for activity."""
        if self._selector is None:
            raise RuntimeError("control server not started")
        events = self._selector.select(max(0.0, timeout))
        events.sort(key=lambda event: event[0].data is None)  # reap closed clients, then accept
        for key, mask in events:
            client = key.data
            if client is None:
                self._accept()
                continue
            if not isinstance(client, _Client):
                client()  # a watched file object (see watch())
                continue
            if client.sock.fileno() < 0:
                continue  # dropped earlier in this round
            if mask & selectors.EVENT_READ:
                self._read(client)
            if mask & selectors.EVENT_WRITE and client.sock.fileno() >= 0:
                self._flush(client)
        self._drop_idle(time.monotonic())
        self._resume_accepting()  # a reply was sent: its connection may now make room

    def _accept(self) -> None:
        if not self._accepting:
            return  # became full earlier in this round
        assert self._listener is not None and self._selector is not None
        evicted = 0
        while len(self._clients) < self.max_clients or self._quietest() is not None:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # EMFILE and friends: keep serving the others
                log.warning("control socket accept failed", error=str(exc))
                break
            if len(self._clients) >= self.max_clients:
                quiet = self._quietest()
                assert quiet is not None
                self._drop(quiet)
                evicted += 1
            sock.setblocking(False)
            client = _Client(sock, self.max_request_bytes, time.monotonic())
            self._clients[sock.fileno()] = client
            self._selector.register(sock, client.events, client)
        if evicted:
            log.warning("control connection limit reached; closed the quietest connections to admit new ones",
                        limit=self.max_clients, closed=evicted)
        if len(self._clients) >= self.max_clients and self._quietest() is None:
            # Every connection is being answered: leave newcomers in the listen backlog until one closes.
            self._selector.unregister(self._listener)
            self._accepting = False

    def _quietest(self) -> _Client | None:
        """The connection that has been quiet longest, not counting those with a reply still being sent."""
        quiet = [c for c in self._clients.values() if not c.out]
        return min(quiet, key=lambda c: c.last_active) if quiet else None

    def _resume_accepting(self) -> None:
        if (not self._accepting and self._listener is not None and self._selector is not None
                and (len(self._clients) < self.max_clients or self._quietest() is not None)):
            self._selector.register(self._listener, selectors.EVENT_READ, None)
            self._accepting = True

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.last_active = time.monotonic()
        if not data:
            self._answer_last(client)
            return
        client.decoder.feed(data)
        try:
            while (frame := client.decoder.next_frame()) is not None:
                client.out += self._handle(*frame)
        except FrameTooLarge as exc:
            log.warning("control request too large", error=str(exc))
            client.out += encode({"ok": False, "error": str(exc)}, exc.framing)
            client.closing = True
        self._flush(client)

    def _answer_last(self, client: _Client) -> None:
        """End of stream from the client: answer an unterminated last line, then close."""
        try:
            frame = client.decoder.finish()
        except FrameTooLarge as exc:
            client.out += encode({"ok": False, "error": str(exc)}, exc.framing)
        else:
            if frame is not None:
                client.out += self._handle(*frame)
        client.closing = True
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            del client.out[:sent]
            client.last_active = time.monotonic()
        if client.closing and not client.out:
            self._drop(client)
            return
        events = 0
        if not client.closing and len(client.out) < _MAX_PENDING_REPLY_BYTES:
            events |= selectors.EVENT_READ
        if client.out:
            events |= selectors.EVENT_WRITE
        if events != client.events:
            assert self._selector is not None
            self._selector.modify(client.sock, events, client)
            client.events = events

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self._clients.pop(fd, None)
            if self._selector is not None:
                try:
                    self._selector.unregister(client.sock)
                except (KeyError, ValueError):
                    pass
        client.sock.close()
        self._resume_accepting()

    def _drop_idle(self, now: float) -> None:
        for client in list(self._clients.values()):
            if now - client.last_active > self.idle_timeout:
                log.info("closing idle control connection", idle_s=round(now - client.last_active))
                self._drop(client)

    # -- requests ----------------------------------------------------------
    def _handle(self, framing: Framing, payload: bytes) -> bytes:
        try:
            reply = self._dispatch(decode(payload))
        except ProtocolError as exc:
            reply = {"ok": False, "error": str(exc)}
        try:
            return encode(reply, framing)
        except (TypeError, ValueError) as exc:
            log.error("control reply not serialisable", error=str(exc))
            return encode({"ok": False, "error": f"reply not serialisable: {exc}"}, framing)

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            return {"ok": False, "error": 'request needs a "cmd" string'}
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {cmd!r} (known: {known})"}
        try:
            result = handler(request)
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a handler bug must not take the daemon down
            log.exception("control command failed", cmd=cmd)
            return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {exc}"}
        if result is None:
            result = {}
        if not isinstance(result, Mapping):
            log.error("control handler returned a non-mapping", cmd=cmd, type=type(result).__name__)
            return {"ok": False, "error": f"{cmd} failed: handler returned {type(result).__name__}"}
        return {"ok": True, **result}


def _socket_answers(path: Path, timeout: float = 1.0) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # cannot tell (permission, timeout): do not steal it
        return True
