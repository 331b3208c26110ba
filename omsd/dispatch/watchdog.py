"""The step watchdog (gunicorn's ``murder_workers``): a worker whose step runs past its limit is killed.

Each worker announces every attempt at a step (:class:`~workers.messages.StepStarted`) with the
step's time limit; the pool keeps it as the slot's :class:`StepRun`, timed from its arrival.
Every turn of the supervisor's loop :func:`watch` warns once when a step passes half its limit
and SIGKILLs the worker of a step past it. The pool then replaces the worker in its slot and
hands the task back as timed out (not as a death: a hung step is not a poison file); the jobs
count the attempt as a failure of that step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)

WARN_AT = 0.5  # of the limit: a warning, and `omsctl check` degraded while it runs on
RECENT_TIMEOUT_S = 10.0  # a worker killed for a time-out this recently keeps `omsctl check` degraded


@dataclass
class StepRun:
    """One attempt at one step, running in a worker."""

    task_id: int
    relative_path: str
    pipeline: str
    index: int
    step: str
    attempt: int
    limit_s: float | None
    started: float  # time.monotonic() when the supervisor heard of it
    warned: bool = False

    @property
    def label(self) -> str:
        """``pipeline/kind#index``, as ``omsctl failed`` names a step (``kind#index``)."""
        return f"{self.pipeline}/{self.step}#{self.index}"

    def running_s(self, now: float) -> float:
        return now - self.started

    def describe(self, now: float) -> dict:
        return {"step": self.label, "attempt": self.attempt, "step_running_s": round(self.running_s(now), 1),
                "step_limit_s": self.limit_s}


class _WatchedSlot(Protocol):
    index: int
    process: Any
    step: StepRun | None
    killed: StepRun | None
    last_timeout: tuple[float, StepRun] | None


def watch(slots: Iterable[_WatchedSlot], now: float | None = None) -> None:
    """Warn about steps past half their limit; kill the workers of steps past it."""
    now = time.monotonic() if now is None else now
    for slot in slots:
        run = slot.step
        if run is None or run.limit_s is None or slot.process is None:
            continue
        running = run.running_s(now)
        if running >= WARN_AT * run.limit_s and not run.warned:
            run.warned = True
            log.warning("step has run past half its time limit", slot=slot.index, file=run.relative_path,
                        step=run.label, attempt=run.attempt, running_s=round(running, 1), limit_s=run.limit_s)
        if running >= run.limit_s:
            log.error("step ran past its time limit; killing its worker", slot=slot.index, pid=slot.process.pid,
                      file=run.relative_path, step=run.label, attempt=run.attempt, limit_s=run.limit_s)
            slot.killed, slot.step = run, None
            slot.process.kill()


def health_reasons(slots: Iterable[_WatchedSlot], now: float | None = None) -> list[str]:
    """Why the watchdog makes the daemon degraded: a step past half its limit, or a recent kill."""
    now = time.monotonic() if now is None else now
    reasons = []
    for slot in slots:
        run = slot.step
        if run is not None and run.limit_s is not None and run.running_s(now) >= WARN_AT * run.limit_s:
            reasons.append(f"worker slot {slot.index}: step {run.label} on {run.relative_path} has run "
                           f"{run.running_s(now):.0f}s of its {run.limit_s:g}s limit")
        if slot.last_timeout is not None and now - slot.last_timeout[0] < RECENT_TIMEOUT_S:
            killed = slot.last_timeout[1]
            reasons.append(f"worker slot {slot.index} was killed {now - slot.last_timeout[0]:.0f}s ago: step "
                           f"{killed.label} on {killed.relative_path} ran past its {killed.limit_s:g}s limit")
    return reasons
