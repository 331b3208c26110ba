"""Flow control of one consumer group: whether it is polled, and why its partitions are paused.

One object owns both brakes (DESIGN.md §3, "Backpressure"):

- **throttle**: while the workers' backlog is saturated (see :mod:`omsd.dispatch.backpressure`) the
  consumer is briefly not polled; librdkafka's bounded prefetch then stops fetching by itself, without
  the purge and re-fetch that pausing costs;
- **pause**: the partitions are paused and polling goes on, so the group membership survives — after
  :data:`THROTTLE_BEFORE_PAUSE_S` of throttling (a slow analysis), while the spill disk is full, while
  registry writes wait for space in the state directory, or during a graceful stop. Fetching resumes once every reason is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

# Not polling a consumer is safe far below max.poll.interval.ms; past this, its partitions are paused.
THROTTLE_BEFORE_PAUSE_S = 10.0
STAGING_RETRY_S = 2.0  # a full spill disk is tried again this often


class PauseReason(str, Enum):
    """Why a consumer group's partitions are paused (shown by ``omsctl status``)."""

    STOPPING = "stopping"  # graceful stop: no new fetches
    WORKERS_BUSY = "workers_busy"  # the workers' backlog stayed saturated
    STAGING_FULL = "staging_full"  # the spill directory's disk is full
    STATE_DIR_FULL = "state_dir_full"  # registry writes wait for space in state_dir (see omsd.statewrites)

    def __str__(self) -> str:
        return self.value


class FlowControl:
    """The throttle and the pause reasons of one consumer group.

    ``on_change(paused, reason)`` is called when the partitions must be paused (the first reason
    arrived) or resumed (the last one left); the consumer's owner applies it.
    """

    def __init__(self, on_change: Callable[[bool, PauseReason], None]) -> None:
        self._on_change = on_change
        self.reasons: set[PauseReason] = set()
        self.throttled_since: float | None = None
        self.staging_full_since = 0.0

    @property
    def paused(self) -> bool:
        return bool(self.reasons)

    def polled(self) -> bool:
        """False while throttled: the supervisor skips this consumer (a paused one is polled to stay in the group)."""
        return self.throttled_since is None or self.paused

    def pause(self, reason: PauseReason) -> None:
        if reason in self.reasons:
            return
        self.reasons.add(reason)
        if len(self.reasons) == 1:
            self._on_change(True, reason)

    def resume(self, reason: PauseReason) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self._on_change(False, reason)

    # -- the workers' backlog ----------------------------------------------------------------------
    def workers_saturated(self, now: float) -> None:
        """Reading more would only queue files: throttle, and pause once that has lasted too long."""
        if self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since > THROTTLE_BEFORE_PAUSE_S:
            self.pause(PauseReason.WORKERS_BUSY)

    def workers_drained(self) -> None:
        """Some worker is about to run dry: read again."""
        self.throttled_since = None
        self.resume(PauseReason.WORKERS_BUSY)

    # -- the spill disk ----------------------------------------------------------------------------
    def staging_full(self, now: float) -> None:
        self.staging_full_since = now
        self.pause(PauseReason.STAGING_FULL)

    def retry_staging(self, now: float) -> None:
        """Try a full spill disk again after a while; a write that still fails pauses again."""
        if PauseReason.STAGING_FULL in self.reasons and now - self.staging_full_since > STAGING_RETRY_S:
            self.resume(PauseReason.STAGING_FULL)
