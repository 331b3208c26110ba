"""Process and daemon state machines."""

from __future__ import annotations

import json

import pytest

from omsd.states import (
    ALIVE_STATES,
    DAEMON_TRANSITIONS,
    DEAD_STATES,
    PROCESS_TRANSITIONS,
    DaemonState,
    ProcessState,
    check_transition,
    is_legal_transition,
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
