"""What the daemon says about itself: the health verdict (``omsctl check``, the watchdog) and the status report.

Both are computed from the parts their owner, the supervisor, hands in; nothing here keeps state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omsd.dispatch.watchdog import health_reasons as watchdog_reasons
from omsd.intake.flow import PauseReason
from omsd.states import DaemonState, ProcessState
from omsd.telemetry.units import human_bytes

if TYPE_CHECKING:
    from omsd.config import Config
    from omsd.dispatch.pool import WorkerPool
    from omsd.intake.consumer import Intake
    from omsd.intake.handover import HandoverLog
    from omsd.intake.staging import Staging
    from omsd.telemetry.totals import Stats

RECENT_DEATH_S = 30.0  # a worker that died this recently makes the daemon "degraded"
NO_ASSIGNMENT_GRACE_S = 30.0  # after start-up
REASSIGNMENT_GRACE_S = 5.0  # after the partitions went, before that (a rebalance takes a few seconds)
RECENT_SHOWN = 20  # rejections and errors listed by `omsctl status`


def assess_health(*, pool: WorkerPool, intakes: Sequence[Intake], staging: Staging,
                  broker_down_since: float | None, uptime_s: float,
                  disk: dict | None = None) -> tuple[bool, list[str]]:
    """Healthy, or the reasons why not (each one a sentence for an operator).

    ``disk``: where state writes wait for space (see :meth:`omsd.statewrites.StateWrites.describe`).
    """
    reasons = []
    if disk is not None:
        reasons.append(f"no space left in {disk['directory']} ({human_bytes(disk['free_bytes'])} free): "
                       f"{disk['waiting_writes']} registry writes wait, intake paused for {disk['since_s']:.0f}s")
    now = time.monotonic()
    for slot in pool.slots:
        if slot.state is not ProcessState.RUNNING:
            reasons.append(f"worker slot {slot.index} is {slot.state.value}")
        elif slot.last_death is not None and now - slot.last_death < RECENT_DEATH_S:
            reasons.append(f"worker slot {slot.index} died {now - slot.last_death:.0f}s ago")
    reasons += watchdog_reasons(pool.slots, now)
    if broker_down_since is not None and now - broker_down_since > 1.0:
        reasons.append(f"broker unreachable for {now - broker_down_since:.0f}s")
    if staging.memory_used > staging.memory_budget:
        reasons.append("staging memory above its budget")
    for intake in intakes:
        if PauseReason.STAGING_FULL in intake.flow.reasons:
            reasons.append(f"staging disk full ({staging.full_reason or 'no space'}); "
                           f"consumer group {intake.group_id} paused")
        lost = intake.unassigned_since is not None and now - intake.unassigned_since > REASSIGNMENT_GRACE_S
        if not intake.assigned and (uptime_s > NO_ASSIGNMENT_GRACE_S or lost):
            reasons.append(f"consumer group {intake.group_id} has no partitions assigned")
    return not reasons, reasons


def status_report(*, state: DaemonState, uptime_s: float, config: Config, intakes: Sequence[Intake],
                  staging: Staging, pool: WorkerPool, stats: Stats, handover: HandoverLog | None,
                  disk: dict | None = None, history: dict | None = None,
                  failed: list[dict] | None = None) -> dict[str, Any]:
    """Everything ``omsctl status`` and the status page show (JSON-ready)."""
    now = time.monotonic()
    rejected: dict[str, int] = {}
    for intake in intakes:
        for reason, count in intake.rejections.counts.items():
            rejected[reason] = rejected.get(reason, 0) + count
    return {
        "pid": os.getpid(), "state": state.value, "uptime_s": round(uptime_s, 1),
        "pipelines": [{"name": p.name, "topic": p.topic, "group": config.group_for(p)} for p in config.pipelines],
        "partitions": [row for intake in intakes for row in intake.describe_partitions()],
        "in_progress": [a.describe(now) for intake in intakes for a in intake.assembler.files.values()],
        "staging": staging.snapshot(),
        "disk_full": disk,
        "workers": pool.describe(),
        "totals": dict(stats.totals),
        "rejected": rejected,
        "handover": {"topic": handover.topic if handover else None,
                     "available": bool(handover and handover.available),
                     "skipped_messages": sum(intake.handed_over_skipped for intake in intakes)},
        "decryption": [{"group": i.group_id, **i.decryptor.describe()} for i in intakes if i.decryptor is not None],
        "recent_rejections": [r for intake in intakes for r in intake.rejections.recent][-RECENT_SHOWN:],
        "recent_errors": stats.recent_errors[-RECENT_SHOWN:],
        "recent_files": list(stats.recent_files),
        "failed_files": (failed or [])[:RECENT_SHOWN],
        "failed_count": len(failed or []),
        "history": history,
    }


def status_line(*, intakes: Sequence[Intake], staging: Staging, pool: WorkerPool, stats: Stats) -> str:
    """One line for systemd's STATUS= (``systemctl status``)."""
    totals = stats.totals
    in_progress = sum(len(i.assembler.files) for i in intakes)
    return (f"{totals['files_completed']} files done, {totals['files_failed']} failed, {in_progress} assembling, "
            f"{pool.pending()} queued; staging {human_bytes(staging.memory_used)} memory, "
            f"{human_bytes(staging.spill_used)} spill")
