"""systemd service notification (sd_notify) without depending on systemd.

``Notifier`` sends datagrams to ``$NOTIFY_SOCKET`` (a path, or an abstract
socket written ``@name``). Without ``NOTIFY_SOCKET`` every method is a no-op,
so the daemon runs the same in a terminal, under a test and under systemd.
Sending never raises and never blocks: a failure is logged once.

With ``WatchdogSec=`` set in the unit, ping ``Notifier.watchdog()`` every
``watchdog_interval() / 2`` seconds from the main loop, so a stuck loop gets
the service restarted.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


def _socket_address(value: str) -> str | bytes:
    """Translate ``$NOTIFY_SOCKET`` into an AF_UNIX address."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify messages to the service manager, if there is one."""

    def __init__(self, notify_socket: str | None = None) -> None:
        """Use ``notify_socket``, else ``$NOTIFY_SOCKET``; disabled when neither is set."""
        if notify_socket is None:
            notify_socket = os.environ.get("NOTIFY_SOCKET") or None
        self._address = _socket_address(notify_socket) if notify_socket else None
        self._sock: socket.socket | None = None
        self._failure_logged = False

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """Tell systemd start-up is complete (``READY=1``), with an optional status line."""
        self._announce("READY", status)

    def status(self, text: str) -> None:
        """Set the free-form status shown by ``systemctl status``."""
        self.send(STATUS=text)

    def watchdog(self) -> None:
        """Ping the watchdog (``WATCHDOG=1``)."""
        self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> None:
        """Tell systemd a graceful stop has begun (``STOPPING=1``)."""
        self._announce("STOPPING", status)

    def _announce(self, state: str, status: str | None) -> None:
        """Send ``state=1``, with ``STATUS=status`` in the same datagram when given."""
        fields: dict[str, object] = {state: 1}
        if status is not None:
            fields["STATUS"] = status
        self.send(**fields)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before the start/stop timeout fires."""
        self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines; returns True when the datagram was sent."""
        if self._address is None or not fields:
            return False
        message = "".join(f"{key.upper()}={value}\n" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                log.warning("sd_notify failed; further failures not logged",
                            notify_socket=os.fsdecode(self._address), error=str(exc))
            return False
        return True

    def close(self) -> None:
        """Close the datagram socket (sending again reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when off.

    None also when ``$WATCHDOG_PID`` names another process. Ping at half this.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000
