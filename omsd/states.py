"""Named states of worker processes and of the daemon, with explicit transitions.

A leaf module (stdlib and structlog): imported by the supervisor, the worker
pool, the status report and ``omsctl``. States are ``str`` enums, so they
serialise to JSON as their value (``"RUNNING"``); in the code they are compared
as enums (``is``), never as strings.

Every change of a worker slot's or the daemon's state goes through
:func:`transition`. A change the table forbids raises :class:`IllegalTransition`
when strict (``OMSD_STRICT_STATES=1``, which the test suite sets for itself and
every process it starts); in production it is logged as an error and made, so
that bookkeeping never wedges a running daemon.

Worker process life cycle (supervisord style)::

    STOPPED ──start──> STARTING ──booted──> RUNNING ──stop──> STOPPING ──> STOPPED
                          │                    │
                          │ died while         │ died
                          │ booting            v
                          └──────────> BACKOFF <── EXITED ──restart──> STARTING
                                      (wait before restarting)
                                         │ │
                  retries exhausted      │ └──wait over──> STARTING
                                         v
                                       FATAL ──operator restart──> STARTING

Any state may be left for STOPPED/STOPPING when the daemon shuts down (see
the table for the exact pairs).
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Mapping, TypeVar

import structlog

log = structlog.get_logger(__name__)

#: Environment variable that makes a forbidden transition raise (the test suite sets it).
STRICT_ENV = "OMSD_STRICT_STATES"


class ProcessState(str, Enum):
    """State of one worker slot's process."""

    STOPPED = "STOPPED"  # not started, or stopped on request
    STARTING = "STARTING"  # spawned, not yet reported ready
    RUNNING = "RUNNING"  # booted and taking work
    BACKOFF = "BACKOFF"  # died; waiting before the next start attempt
    STOPPING = "STOPPING"  # asked to stop, not yet exited
    EXITED = "EXITED"  # exited unexpectedly from RUNNING
    FATAL = "FATAL"  # gave up: too many failed starts in a row

    def __str__(self) -> str:
        return self.value


class DaemonState(str, Enum):
    """State of the daemon as a whole (reported by ``omsctl status``)."""

    STARTING = "STARTING"  # loading config, starting workers and consumers
    RUNNING = "RUNNING"  # consuming and processing
    DRAINING = "DRAINING"  # graceful stop: no new fetches, finishing in-flight work
    STOPPING = "STOPPING"  # committing, flushing producers, stopping workers
    STOPPED = "STOPPED"  # everything closed; about to exit

    def __str__(self) -> str:
        return self.value


_P = ProcessState
PROCESS_TRANSITIONS: Mapping[ProcessState, frozenset[ProcessState]] = {
    _P.STOPPED: frozenset({_P.STARTING}),
    _P.STARTING: frozenset({_P.RUNNING, _P.BACKOFF, _P.STOPPING}),
    _P.RUNNING: frozenset({_P.STOPPING, _P.EXITED}),
    _P.BACKOFF: frozenset({_P.STARTING, _P.FATAL, _P.STOPPED}),
    _P.STOPPING: frozenset({_P.STOPPED}),
    _P.EXITED: frozenset({_P.STARTING, _P.BACKOFF, _P.STOPPED}),
    _P.FATAL: frozenset({_P.STARTING, _P.STOPPED}),
}

_D = DaemonState
DAEMON_TRANSITIONS: Mapping[DaemonState, frozenset[DaemonState]] = {
    _D.STARTING: frozenset({_D.RUNNING, _D.STOPPING}),
    _D.RUNNING: frozenset({_D.DRAINING, _D.STOPPING}),
    _D.DRAINING: frozenset({_D.STOPPING}),
    _D.STOPPING: frozenset({_D.STOPPED}),
    _D.STOPPED: frozenset(),
}

#: Worker states in which a process exists (may hold an in-flight file).
ALIVE_STATES = frozenset({_P.STARTING, _P.RUNNING, _P.STOPPING})
#: Worker states in which no process exists.
DEAD_STATES = frozenset({_P.STOPPED, _P.BACKOFF, _P.EXITED, _P.FATAL})

S = TypeVar("S", ProcessState, DaemonState)


def _table_for(state: ProcessState | DaemonState) -> Mapping:
    if isinstance(state, ProcessState):
        return PROCESS_TRANSITIONS
    if isinstance(state, DaemonState):
        return DAEMON_TRANSITIONS
    raise TypeError(f"not a state: {state!r}")


def is_legal_transition(old: S, new: S) -> bool:
    """True when ``old -> new`` is in the transition table (never for old == new)."""
    if type(old) is not type(new):
        return False
    return new in _table_for(old)[old]


class IllegalTransition(ValueError):
    """A state change the transition table forbids."""


def check_transition(old: S, new: S) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is a legal transition."""
    _table_for(old)
    if not is_legal_transition(old, new):
        raise IllegalTransition(f"illegal state transition {old!s} -> {new!s}")


def strict() -> bool:
    """True when a forbidden transition must raise (tests) rather than be logged (production)."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def transition(old: S, new: S, subject: str) -> S:
    """Check ``old -> new`` for ``subject`` (e.g. "worker slot 2") and return ``new``.

    Forbidden: raises :class:`IllegalTransition` when :func:`strict`, else logs an error and returns ``new``.
    """
    try:
        check_transition(old, new)
    except IllegalTransition as exc:
        if strict():
            raise IllegalTransition(f"{subject}: {exc}") from None
        log.error("illegal state transition", subject=subject, old=old.value, new=new.value)
    return new
