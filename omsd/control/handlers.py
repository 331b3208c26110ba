"""What the daemon answers on its control socket: check, status, stop, failed, retry.

The handlers see the daemon only through :class:`DaemonView`, a small protocol the supervisor implements;
they never reach into its pool, staging or consumers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from omsd.control.requests import retry_selection, stop_timeout
from omsd.states import DaemonState


class DaemonView(Protocol):
    """What the control socket may see of the daemon and ask of it."""

    @property
    def state(self) -> DaemonState:
        """The daemon's state."""

    def health(self) -> tuple[bool, list[str]]:
        """Healthy, or the reasons why not."""

    def status(self) -> dict[str, Any]:
        """The status report (JSON-ready)."""

    def request_stop(self, why: str, timeout: float | None = None) -> None:
        """Begin the graceful stop (``timeout``: seconds allowed, else the configured time)."""

    def failed_files(self) -> list[dict]:
        """Files whose pipelines failed, as the registry lists them."""

    def retry_failed(self, wanted: Callable[[dict], bool]) -> int:
        """Queue the wanted failed files again; returns how many."""

    def undecryptable_messages(self) -> list[dict]:
        """Encrypted messages kept because they could not be decrypted (empty without kafkacrypto)."""

    def retry_undecryptable(self) -> int:
        """Try every kept undecryptable message again; returns how many."""


def build_handlers(daemon: DaemonView) -> dict[str, Callable[[dict], dict]]:
    """The control socket's commands, by name."""

    def check(_req: dict) -> dict:
        ok, reasons = daemon.health()
        return {"healthy": ok, "reasons": reasons, "state": daemon.state.value, "pid": os.getpid()}

    def stop(req: dict) -> dict:
        daemon.request_stop("omsctl stop", timeout=stop_timeout(req))
        return {"pid": os.getpid()}

    def failed(_req: dict) -> dict:
        return {"files": daemon.failed_files(), "undecryptable": daemon.undecryptable_messages()}

    def retry(req: dict) -> dict:
        if req.get("undecryptable") is True:
            return {"queued": daemon.retry_undecryptable(), "undecryptable": True}
        paths = retry_selection(req, daemon.failed_files())
        return {"queued": daemon.retry_failed(lambda row: paths is None or row["path"] in paths)}

    return {"check": check, "status": lambda _req: daemon.status(), "stop": stop, "failed": failed, "retry": retry}
