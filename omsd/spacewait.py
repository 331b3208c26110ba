"""Start-up on a full state directory: wait for space to open the registry, answering the control socket.

A daemon restarted while its state directory has no room (after a graceful
stop with writes still waiting, or on a disk another program filled) cannot
open its registry: SQLite needs space for the write-ahead log and its index.
That is a state, like a full disk met while running, not a reason to exit in
a restart loop. :func:`open_registry_when_space` tries again every second;
meanwhile the daemon is up: ``omsctl check`` reports it degraded with the
reason, ``omsctl status`` shows where space ran out, ``omsctl stop``, SIGTERM
and SIGINT stop it (exit 0), and systemd is told it is ready and waiting.
Nothing is read from Kafka before the registry opens, so nothing is lost.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from omsd.config import Config
from omsd.control.handlers import build_handlers
from omsd.control.server import ControlServer
from omsd.registry import Registry, RegistryFull, registry_path
from omsd.states import DaemonState
from omsd.statewrites import RETRY_EVERY_S, disk_full_report, free_bytes
from omsd.telemetry.systemd import Notifier, watchdog_interval

log = structlog.get_logger(__name__)


class WaitingForSpace:
    """What the control socket sees of a daemon whose registry cannot open yet (a :class:`DaemonView`)."""

    def __init__(self, state_dir: Path, error: str) -> None:
        self.state_dir = state_dir
        self.error = error
        self.since = time.monotonic()
        self.stop_requested: str | None = None

    @property
    def state(self) -> DaemonState:
        return DaemonState.STARTING

    def reason(self) -> str:
        return (f"no space left in {self.state_dir} ({free_bytes(self.state_dir)} bytes free): the registry "
                f"cannot open; waiting for space before reading anything")

    def health(self) -> tuple[bool, list[str]]:
        return False, [self.reason()]

    def status(self) -> dict[str, Any]:
        disk = disk_full_report(self.state_dir, 0, self.since, self.error)
        return {"state": self.state.value, "pid": os.getpid(), "uptime_s": disk["since_s"], "disk_full": disk,
                "partitions": [], "workers": []}

    def request_stop(self, why: str, timeout: float | None = None) -> None:
        self.stop_requested = why

    def failed_files(self) -> list[dict]:
        return []

    def retry_failed(self, wanted: Callable[[dict], bool]) -> int:
        return 0

    def undecryptable_messages(self) -> list[dict]:
        return []

    def retry_undecryptable(self) -> int:
        return 0


class StateOpened(NamedTuple):
    """The registry, and the control server that answered while it could not open (None if it opened at once)."""

    registry: Registry
    control: ControlServer | None


def open_registry_when_space(config: Config, retry_every_s: float = RETRY_EVERY_S) -> StateOpened | None:
    """The daemon's registry, opened once its file system has room; None when a stop came first.

    The control server that answered meanwhile is handed on still listening, so ``omsctl`` never finds
    the daemon gone between the wait and the supervisor (which gives it its own handlers). Raises
    :class:`~omsd.registry.RegistryDamaged` as :class:`~omsd.registry.Registry` does.
    """
    path = registry_path(config.state_dir)
    try:
        return StateOpened(Registry(path), None)
    except RegistryFull as exc:
        waiting = WaitingForSpace(config.state_dir, str(exc))
    log.error("no space left for the registry; waiting for space (omsctl check reports it)",
              directory=str(config.state_dir), free_bytes=free_bytes(config.state_dir), error=waiting.error)
    signals: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: signals.append(signum))
                for signum in (signal.SIGTERM, signal.SIGINT)}
    notifier = Notifier()
    notifier.ready(status=waiting.reason())  # up and answering; systemd must not time the start out
    ping_every = (watchdog_interval() or 2.0) / 2
    server = ControlServer(config.control_socket, build_handlers(waiting))
    handed_on = False
    try:
        server.start()
        next_try = next_ping = time.monotonic()
        while True:
            server.poll(timeout=0.2)
            now = time.monotonic()
            if signals or waiting.stop_requested:
                why = waiting.stop_requested or f"{signal.Signals(signals[0]).name} received"
                log.info("stopping before the registry opened", reason=why)
                return None
            if now >= next_ping:
                notifier.watchdog()
                next_ping = now + ping_every
            if now >= next_try:
                next_try = now + retry_every_s
                try:
                    registry = Registry(path)
                except RegistryFull as exc:
                    waiting.error = str(exc)
                    continue
                log.info("space is back; the registry is open", directory=str(config.state_dir),
                         waited_s=round(now - waiting.since, 1))
                handed_on = True
                return StateOpened(registry, server)
    finally:
        if not handed_on:
            server.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
