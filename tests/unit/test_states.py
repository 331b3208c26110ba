"""Process and daemon state machines."""

from __future__ import annotations

import json

import pytest
import structlog

from omsd.states import (
    ALIVE_STATES,
    DAEMON_TRANSITIONS,
    DEAD_STATES,
    PROCESS_TRANSITIONS,
    STRICT_ENV,
    DaemonState,
    IllegalTransition,
    ProcessState,
    check_transition,
    is_legal_transition,
    transition,
)

P = ProcessState
D = DaemonState


def test_every_state_has_a_row():
    assert set(PROCESS_TRANSITIONS) == set(ProcessState)
    assert set(DAEMON_TRANSITIONS) == set(DaemonState)
    assert ALIVE_STATES | DEAD_STATES == set(ProcessState)
    assert not ALIVE_STATES & DEAD_STATES


@pytest.mark.parametrize("path", [
    [P.STOPPED, P.STARTING, P.RUNNING, P.STOPPING, P.STOPPED],
    [P.STOPPED, P.STARTING, P.BACKOFF, P.STARTING, P.BACKOFF, P.FATAL, P.STARTING],
    [P.STARTING, P.RUNNING, P.EXITED, P.BACKOFF, P.STARTING],
    [P.RUNNING, P.EXITED, P.STARTING],
    [P.BACKOFF, P.STOPPED],
])
def test_legal_process_paths(path):
    for old, new in zip(path, path[1:]):
        check_transition(old, new)


@pytest.mark.parametrize("old,new", [
    (P.STOPPED, P.RUNNING), (P.RUNNING, P.STARTING), (P.STOPPING, P.RUNNING),
    (P.FATAL, P.RUNNING), (P.EXITED, P.RUNNING), (P.RUNNING, P.RUNNING),
    (P.STOPPED, P.FATAL), (P.RUNNING, P.BACKOFF),
])
def test_illegal_process_transitions_raise(old, new):
    assert not is_legal_transition(old, new)
    with pytest.raises(ValueError, match=f"{old.value} -> {new.value}"):
        check_transition(old, new)


def test_daemon_transitions():
    for old, new in [(D.STARTING, D.RUNNING), (D.RUNNING, D.DRAINING),
                     (D.DRAINING, D.STOPPING), (D.STOPPING, D.STOPPED), (D.STARTING, D.STOPPING)]:
        check_transition(old, new)
    for old, new in [(D.STOPPED, D.RUNNING), (D.DRAINING, D.RUNNING), (D.RUNNING, D.STOPPED)]:
        with pytest.raises(ValueError):
            check_transition(old, new)


def test_mixing_state_kinds_is_illegal():
    with pytest.raises(ValueError):
        check_transition(P.STOPPED, D.STARTING)
    with pytest.raises(TypeError):
        check_transition("STOPPED", P.STARTING)


def test_states_serialise_as_their_names():
    assert json.dumps({"state": P.BACKOFF}) == '{"state": "BACKOFF"}'
    assert str(D.DRAINING) == "DRAINING"
    assert ProcessState("RUNNING") is P.RUNNING


def test_a_forbidden_transition_raises_when_strict(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")
    assert transition(P.RUNNING, P.EXITED, "worker slot 0") is P.EXITED
    with pytest.raises(IllegalTransition, match="worker slot 0: illegal state transition RUNNING -> BACKOFF"):
        transition(P.RUNNING, P.BACKOFF, "worker slot 0")


def test_a_forbidden_transition_is_logged_and_made_in_production(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    with structlog.testing.capture_logs() as logs:
        assert transition(D.STOPPED, D.RUNNING, "daemon") is D.RUNNING
    assert logs == [{"event": "illegal state transition", "subject": "daemon", "old": "STOPPED", "new": "RUNNING",
                     "log_level": "error"}]
