"""Flow control of one consumer group: throttle first, pause after a while, resume when every reason is gone."""

from __future__ import annotations

from omsd.intake.flow import STAGING_RETRY_S, THROTTLE_BEFORE_PAUSE_S, FlowControl, PauseReason


def flow() -> tuple[FlowControl, list[tuple[bool, PauseReason]]]:
    changes: list[tuple[bool, PauseReason]] = []
    return FlowControl(lambda paused, reason: changes.append((paused, reason))), changes


def test_a_saturated_backlog_throttles_then_pauses_and_a_drained_one_resumes() -> None:
    control, changes = flow()
    control.workers_saturated(100.0)
    assert not control.polled() and not control.paused and changes == []  # throttled: not polled, not paused
    control.workers_saturated(100.0 + THROTTLE_BEFORE_PAUSE_S / 2)
    assert changes == []
    control.workers_saturated(100.0 + THROTTLE_BEFORE_PAUSE_S + 0.1)
    assert control.paused and control.polled()  # paused partitions are polled, so the membership survives
    assert changes == [(True, PauseReason.WORKERS_BUSY)]
    control.workers_drained()
    assert not control.paused and control.polled() and control.throttled_since is None
    assert changes[-1] == (False, PauseReason.WORKERS_BUSY)


def test_partitions_resume_only_when_the_last_reason_is_gone() -> None:
    control, changes = flow()
    control.pause(PauseReason.STOPPING)
    control.staging_full(10.0)
    control.pause(PauseReason.STOPPING)
    assert changes == [(True, PauseReason.STOPPING)] and control.reasons == {PauseReason.STOPPING,
                                                                              PauseReason.STAGING_FULL}
    control.retry_staging(10.0 + STAGING_RETRY_S / 2)
    assert PauseReason.STAGING_FULL in control.reasons  # too early to try the disk again
    control.retry_staging(10.0 + STAGING_RETRY_S + 0.1)
    assert control.reasons == {PauseReason.STOPPING} and len(changes) == 1
    control.resume(PauseReason.WORKERS_BUSY)  # not a reason now: nothing happens
    control.resume(PauseReason.STOPPING)
    assert changes == [(True, PauseReason.STOPPING), (False, PauseReason.STOPPING)]
