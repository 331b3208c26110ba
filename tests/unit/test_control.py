"""Control socket: ControlServer + ControlClient over real Unix sockets."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog

from omsd.control.client import ControlClient, DaemonNotRunning
from omsd.control.protocol import FrameDecoder, Framing, ProtocolError, decode, encode
from omsd.control.server import CommandError, ControlServer, ControlSocketInUse


def _echo(request: dict) -> dict:
    return {"echo": request}


def _boom(request: dict) -> dict:
    raise RuntimeError("boom")


def _refuse(request: dict) -> dict:
    raise CommandError("no such file")


HANDLERS = {"echo": _echo, "boom": _boom, "refuse": _refuse, "none": lambda r: None,
            "bad": lambda r: [1, 2]}


@contextmanager
def serving(server: ControlServer):
    """Run ``server.poll`` in a thread (as the supervisor's loop would) until exit."""
    server.start()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.poll(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "omsd.sock"


@pytest.fixture
def server(sock_path: Path):
    with serving(ControlServer(sock_path, HANDLERS, max_request_bytes=1024)) as srv:
        yield srv


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


class Replies:
    """Reads reply frames from a raw socket, remembering bytes past the last frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(max_bytes=1 << 20)

    def next(self) -> tuple[Framing, dict]:
        while (frame := self.decoder.next_frame()) is None:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before a reply"
            self.decoder.feed(chunk)
        return frame[0], decode(frame[1])

    def line(self) -> dict:
        framing, reply = self.next()
        assert framing is Framing.NEWLINE
        return reply

    def prefixed(self) -> dict:
        framing, reply = self.next()
        assert framing is Framing.LENGTH
        return reply


def _read_line(sock: socket.socket) -> dict:
    return Replies(sock).line()


def _read_prefixed(sock: socket.socket) -> dict:
    return Replies(sock).prefixed()


# -- round trips ---------------------------------------------------------------
@pytest.mark.parametrize("framing", [Framing.LENGTH, Framing.NEWLINE])
def test_client_round_trip(server, sock_path, framing):
    reply = ControlClient(sock_path, framing=framing).request("echo", n=3, name="x")
    assert reply == {"ok": True, "echo": {"cmd": "echo", "n": 3, "name": "x"}}


def test_newline_request_gets_newline_reply(server, sock_path):
    with _connect(sock_path) as sock:
        sock.sendall(b'{"cmd": "echo", "a": 1}\n')
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(65536)
    assert data.count(b"\n") == 1
    assert json.loads(data) == {"ok": True, "echo": {"cmd": "echo", "a": 1}}


def test_length_prefixed_request_gets_length_prefixed_reply(server, sock_path):
    payload = json.dumps({"cmd": "echo", "a": 2}).encode()
    with _connect(sock_path) as sock:
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        header = sock.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack(">I", header)
        body = sock.recv(length, socket.MSG_WAITALL)
    assert json.loads(body) == {"ok": True, "echo": {"cmd": "echo", "a": 2}}


def test_pipelined_requests_in_mixed_framing_answered_in_order(server, sock_path):
    with _connect(sock_path) as sock:
        sock.sendall(encode({"cmd": "echo", "i": 1}, Framing.NEWLINE)
                     + encode({"cmd": "echo", "i": 2}, Framing.LENGTH)
                     + b"\n  " + encode({"cmd": "echo", "i": 3}, Framing.NEWLINE))
        replies = Replies(sock)
        assert replies.line()["echo"]["i"] == 1
        assert replies.prefixed()["echo"]["i"] == 2
        assert replies.line()["echo"]["i"] == 3


def test_unterminated_line_is_answered_at_end_of_stream(server, sock_path):
    with _connect(sock_path) as sock:
        sock.sendall(b'{"cmd": "echo"}')
        sock.shutdown(socket.SHUT_WR)
        assert _read_line(sock) == {"ok": True, "echo": {"cmd": "echo"}}
        assert sock.recv(10) == b""  # server closes after answering


def test_handler_returning_none_replies_ok(server, sock_path):
    assert ControlClient(sock_path).request("none") == {"ok": True}


# -- permissions and socket file handling ----------------------------------------
def test_socket_is_mode_0600_and_parent_created(server, sock_path):
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_stale_socket_file_is_replaced(sock_path):
    sock_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # file stays, nobody listens
    os.chmod(sock_path, 0o666)
    with pytest.raises(DaemonNotRunning):
        ControlClient(sock_path).request("echo")
    with serving(ControlServer(sock_path, HANDLERS)):
        assert ControlClient(sock_path).request("echo")["ok"] is True
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600  # a new socket file
    assert not sock_path.exists()


def test_live_socket_is_refused_and_keeps_working(server, sock_path):
    with pytest.raises(ControlSocketInUse):
        ControlServer(sock_path, HANDLERS).start()
    assert ControlClient(sock_path).request("echo")["ok"] is True


def test_regular_file_at_socket_path_is_left_alone(tmp_path):
    path = tmp_path / "omsd.sock"
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        ControlServer(path, HANDLERS).start()
    assert path.read_text() == "not a socket"


def test_close_unlinks_only_our_own_socket(sock_path):
    first = ControlServer(sock_path, HANDLERS)
    first.start()
    sock_path.unlink()  # someone replaced the file with their own socket
    other = ControlServer(sock_path, HANDLERS)
    other.start()
    first.close()
    assert sock_path.exists(), "close() removed a socket that was not ours"
    other.close()
    assert not sock_path.exists()


def test_missing_socket_raises_daemon_not_running(tmp_path):
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "absent.sock").request("status")


# -- bad requests ----------------------------------------------------------------
def test_malformed_json_gets_error_and_connection_stays_usable(server, sock_path):
    with _connect(sock_path) as sock:
        sock.sendall(b'{"cmd": "echo",\n')
        reply = _read_line(sock)
        assert reply["ok"] is False and "malformed JSON" in reply["error"]
        sock.sendall(b'{"cmd": "echo"}\n')
        assert _read_line(sock)["ok"] is True


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"status"', b"42", b"null"])
def test_non_object_request_gets_error(server, sock_path, payload):
    with _connect(sock_path) as sock:
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        reply = _read_prefixed(sock)
    assert reply["ok"] is False
    assert "JSON object" in reply["error"]


def test_missing_or_non_string_cmd_gets_error(server, sock_path):
    with _connect(sock_path) as sock:
        sock.sendall(b'{"command": "status"}\n{"cmd": 7}\n')
        replies = Replies(sock)
        for _ in range(2):
            reply = replies.line()
            assert reply["ok"] is False and '"cmd"' in reply["error"]


def test_unknown_command_gets_error(server, sock_path):
    reply = ControlClient(sock_path).request("frobnicate")
    assert reply["ok"] is False
    assert "frobnicate" in reply["error"]


def test_oversized_length_prefixed_request_is_refused(server, sock_path):
    with _connect(sock_path) as sock:
        sock.sendall(struct.pack(">I", 5000) + b"{" * 100)
        reply = _read_prefixed(sock)
        assert reply["ok"] is False and "exceeds 1024" in reply["error"]
        assert sock.recv(10) == b""  # cannot resynchronise: connection closed
    assert ControlClient(sock_path).request("echo")["ok"] is True


def test_oversized_line_is_refused(server, sock_path):
    with _connect(sock_path) as sock:
        sock.sendall(b'{"cmd": "echo", "pad": "' + b"x" * 3000)
        reply = _read_line(sock)
        assert reply["ok"] is False and "exceeds 1024" in reply["error"]
    assert ControlClient(sock_path).request("echo")["ok"] is True


def test_handler_exception_is_reported_and_server_keeps_going(server, sock_path):
    with structlog.testing.capture_logs() as logs:
        reply = ControlClient(sock_path).request("boom")
    assert any(e["event"] == "control command failed" and e["cmd"] == "boom"
               and e["log_level"] == "error" for e in logs), logs
    assert reply["ok"] is False
    assert "RuntimeError" in reply["error"] and "boom" in reply["error"]
    assert ControlClient(sock_path).request("refuse") == {"ok": False, "error": "no such file"}
    assert ControlClient(sock_path).request("bad")["ok"] is False
    assert ControlClient(sock_path).request("echo")["ok"] is True


# -- concurrency -----------------------------------------------------------------
def test_many_concurrent_clients(server, sock_path):
    def ask(i: int) -> dict:
        framing = Framing.LENGTH if i % 2 else Framing.NEWLINE
        return ControlClient(sock_path, framing=framing).request("echo", i=i)

    with ThreadPoolExecutor(max_workers=40) as pool:
        replies = list(pool.map(ask, range(120)))
    assert [r["echo"]["i"] for r in replies] == list(range(120))


@pytest.mark.parametrize("partial", [b'{"cmd": "ec', struct.pack(">I", 40) + b'{"cmd"', b"\x00\x00"])
def test_half_sent_request_does_not_block_others(server, sock_path, partial):
    with _connect(sock_path) as slow:
        slow.sendall(partial)
        time.sleep(0.1)
        client = ControlClient(sock_path, timeout=2.0)
        for i in range(5):
            assert client.request("echo", i=i)["echo"]["i"] == i
        # the slow client can still finish its request later
        rest = {b'{"cmd": "ec': b'ho"}\n'}.get(partial)
        if rest is not None:
            slow.sendall(rest)
            assert _read_line(slow)["ok"] is True


def test_poll_returns_within_timeout_with_idle_and_partial_clients(sock_path):
    srv = ControlServer(sock_path, HANDLERS)
    srv.start()
    try:
        with _connect(sock_path) as slow:
            slow.sendall(b'{"cmd"')
            srv.poll(0.05)  # accept
            srv.poll(0.05)  # read the partial request
            started = time.monotonic()
            srv.poll(0.2)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0
            assert srv.n_clients == 1
    finally:
        srv.close()


def test_idle_client_is_disconnected(sock_path):
    srv = ControlServer(sock_path, HANDLERS, idle_timeout=0.2)
    srv.start()
    try:
        with _connect(sock_path) as idle:
            deadline = time.monotonic() + 5
            srv.poll(0.05)
            assert srv.n_clients == 1
            while srv.n_clients and time.monotonic() < deadline:
                srv.poll(0.05)
            assert srv.n_clients == 0
            assert idle.recv(10) == b""
    finally:
        srv.close()


# -- protocol helpers ------------------------------------------------------------
def test_decoder_handles_byte_at_a_time_feed():
    stream = encode({"cmd": "a"}, Framing.LENGTH) + encode({"cmd": "b"}, Framing.NEWLINE)
    decoder = FrameDecoder()
    frames = []
    for byte in stream:
        decoder.feed(bytes([byte]))
        while (frame := decoder.next_frame()) is not None:
            frames.append((frame[0], decode(frame[1])))
    assert frames == [(Framing.LENGTH, {"cmd": "a"}), (Framing.NEWLINE, {"cmd": "b"})]


def test_decode_rejects_empty_and_bad_utf8():
    for payload in (b"", b"  ", b"\xff\xfe{", b"{'cmd': 1}"):
        with pytest.raises(ProtocolError):
            decode(payload)


def test_watched_fd_wakes_poll_and_runs_callback(sock_path):
    srv = ControlServer(sock_path, HANDLERS)
    srv.start()
    read_end, write_end = os.pipe()
    woken = []
    try:
        srv.watch(read_end, lambda: woken.append(os.read(read_end, 100)))
        threading.Timer(0.1, os.write, (write_end, b"\x0f")).start()
        started = time.monotonic()
        while not woken and time.monotonic() - started < 5:
            srv.poll(10.0)  # returns when the pipe becomes readable, not after 10 s
        assert woken == [b"\x0f"]
        assert time.monotonic() - started < 5
    finally:
        srv.close()
        os.close(read_end)
        os.close(write_end)


def test_at_the_limit_the_quietest_connection_makes_room(sock_path):
    with serving(ControlServer(sock_path, HANDLERS, max_clients=2)) as srv:
        first, second = _connect(sock_path), _connect(sock_path)
        deadline = time.monotonic() + 5
        while srv.n_clients < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        second.sendall(b" ")  # second has spoken since: first is the quietest
        time.sleep(0.1)
        with _connect(sock_path) as third:
            third.sendall(b'{"cmd": "echo", "n": 3}\n')
            third.settimeout(5)
            assert Replies(third).line()["echo"]["n"] == 3
        first.settimeout(5)
        assert first.recv(10) == b""  # closed to admit the newcomer
        second.sendall(b'{"cmd": "echo", "n": 2}\n')
        assert Replies(second).line()["echo"]["n"] == 2
        first.close()
        second.close()


def test_check_gets_through_200_connections_that_keep_talking(sock_path):
    """More connections than the limit (and the listen backlog) that trickle whitespace, so that
    closing idle connections alone would not free a slot: a request still gets its reply at once."""
    with serving(ControlServer(sock_path, HANDLERS)):
        crowd = []
        try:
            for _ in range(200):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                crowd.append(sock)
                sock.connect(str(sock_path))  # blocking: waits while the listen backlog is full
                sock.setblocking(False)
            done = threading.Event()

            def trickle() -> None:
                while not done.is_set():
                    for sock in crowd:
                        try:
                            sock.send(b" ")
                        except OSError:
                            pass  # closed by the server to make room: that is the point
                    done.wait(0.2)

            talker = threading.Thread(target=trickle, daemon=True)
            talker.start()
            time.sleep(0.5)
            started = time.monotonic()
            reply = ControlClient(sock_path, timeout=5).request("echo", n=1)
            assert reply["echo"]["n"] == 1 and time.monotonic() - started < 5
            done.set()
            talker.join(5)
        finally:
            for sock in crowd:
                sock.close()
