"""The ``exec`` step: run a program on the saved file.

``exec: {argv: [str, ...], timeout_secs?: seconds (300), env?: {NAME: value}}`` (``timeout`` is
an older name of ``timeout_secs``; without either the program may run 300 s, whatever the daemon's
``step_timeout_secs``).
In each argv item ``{path}`` becomes the saved file's full path,
``{relative_path}`` its path relative to the upload root and ``{filename}``
its name. The program runs in its own process group with stdin closed and
``env`` added to the worker's environment. A non-zero exit or a timeout
fails the step; on timeout the whole process group is killed (the step
kills it itself; the supervisor's watchdog waits a little longer, so that no
program is left behind by a killed worker).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import IO, Any

import structlog

from workers.steps.base import Option, OutboundMessage, Step, StepConfigError, StepContext

log = structlog.get_logger(__name__)

STDERR_TAIL = 2000
KILL_GRACE_S = 2.0
DEFAULT_TIMEOUT_S = 300.0
WATCHDOG_GRACE_S = 3 * KILL_GRACE_S  # the step's own kill first; the watchdog only if that hangs


class ExecFailed(RuntimeError):
    """The program exited non-zero, was killed, or timed out."""


def _tail(handle: IO[bytes], limit: int = STDERR_TAIL) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - limit))
    return handle.read().decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL it if it does not go."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # the leader may be gone while the rest of its group lingers
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ExecStep(Step):
    """``exec: {argv, timeout_secs?, env?}`` (``timeout``: the older name of ``timeout_secs``)."""

    kind = "exec"
    OPTIONS = {
        "argv": Option((list,), required=True, item_type=str),
        "timeout": Option((int, float), default=None, minimum=0.001),
        "env": Option((dict,), default=None, item_type=str),
    }

    def __init__(self, options: dict | None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        argv: list[str] = self.options["argv"]
        if not argv or not argv[0]:
            raise StepConfigError(f"{self.where}: option 'argv' must name a program")
        if not self.has_prior_save:
            raise StepConfigError(f"{self.where}: needs the file on disk: add a save step before it")
        self.env = {**os.environ, **(self.options["env"] or {})}
        program = argv[0]
        if "{" not in program:
            found = (
                program if os.sep in program and os.access(program, os.X_OK)
                else shutil.which(program, path=self.env.get("PATH"))
            )
            if not found:
                raise StepConfigError(f"{self.where}: program {program!r} not found or not executable")

    def default_time_limit(self, daemon_default: float | None) -> float | None:
        """``timeout`` when given, else 300 s."""
        timeout = self.options["timeout"]
        return float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S

    @property
    def watchdog_s(self) -> float | None:
        return None if self.timeout_s is None else self.timeout_s + WATCHDOG_GRACE_S

    def argv_for(self, ctx: StepContext) -> list[str]:
        """The command line for ``ctx.datafile`` with placeholders filled in."""
        datafile = ctx.datafile
        if datafile.full_filepath is None:
            raise ExecFailed("the file has not been saved by an earlier step")
        values = {
            "{path}": str(datafile.full_filepath),
            "{relative_path}": datafile.relative_filepath,
            "{filename}": datafile.filename,
        }
        argv = []
        for item in self.options["argv"]:
            for placeholder, value in values.items():
                item = item.replace(placeholder, value)
            argv.append(item)
        return argv

    def run(self, ctx: StepContext) -> list[OutboundMessage]:
        argv = self.argv_for(ctx)
        timeout = self.timeout_s
        started = time.monotonic()
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                    env=self.env, start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise ExecFailed(f"cannot run {argv[0]!r}: {exc}") from exc
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise ExecFailed(
                    f"{argv[0]!r} timed out after {timeout:g}s and was killed; "
                    f"stderr tail: {_tail(stderr)!r}"
                ) from None
            except BaseException:
                _kill_group(proc)
                raise
            log.debug(
                "exec finished", argv=argv, exit_code=code,
                duration_s=round(time.monotonic() - started, 3), stdout_tail=_tail(stdout, 500),
            )
            if code != 0:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                raise ExecFailed(f"{argv[0]!r} {how}; stderr tail: {_tail(stderr)!r}")
        return []
