"""What the daemon answers on its control socket: check, status, stop, failed, retry."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable

from omsd.control.server import CommandError

if TYPE_CHECKING:
    from omsd.supervisor import Supervisor

RECENT_DEATH_S = 30.0  # a worker that died this recently makes the daemon "degraded"
NO_ASSIGNMENT_GRACE_S = 30.0


def health(sup: "Supervisor") -> tuple[bool, list[str]]:
    """Healthy, or the reasons why not (each one a sentence for an operator)."""
    reasons = []
    now = time.monotonic()
    for slot in sup.pool.slots:
        if slot.state.value != "RUNNING":
            reasons.append(f"worker slot {slot.index} is {slot.state.value}")
        elif slot.last_death is not None and now - slot.last_death < RECENT_DEATH_S:
            reasons.append(f"worker slot {slot.index} died {now - slot.last_death:.0f}s ago")
    if sup.broker_down_since is not None and now - sup.broker_down_since > 1.0:
        reasons.append(f"broker unreachable for {now - sup.broker_down_since:.0f}s")
    if sup.staging.memory_used > sup.staging.memory_budget:
        reasons.append("staging memory above its budget")
    uptime = time.time() - sup.started
    for intake in sup.intakes:
        if "staging_full" in intake.pause_reasons:
            reasons.append(f"staging disk full; consumer group {intake.group_id} paused")
        if not intake.assigned and uptime > NO_ASSIGNMENT_GRACE_S:
            reasons.append(f"consumer group {intake.group_id} has no partitions assigned")
    return not reasons, reasons


def status(sup: "Supervisor") -> dict[str, Any]:
    """Everything `omsctl status` shows."""
    now = time.monotonic()
    rejected: dict[str, int] = {}
    for intake in sup.intakes:
        for reason, count in intake.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    return {
        "pid": os.getpid(), "state": sup.state.value, "uptime_s": round(time.time() - sup.started, 1),
        "pipelines": [{"name": p.name, "topic": p.topic, "group": sup.config.group_for(p)}
                      for p in sup.config.pipelines],
        "partitions": [row for intake in sup.intakes for row in intake.describe_partitions()],
        "in_progress": [a.describe(now) for intake in sup.intakes for a in intake.assembler.files.values()],
        "staging": sup.staging.snapshot(),
        "workers": sup.pool.describe(),
        "totals": dict(sup.stats.totals),
        "rejected": rejected,
        "handover": {"topic": sup.handover.topic if sup.handover else None,
                     "available": bool(sup.handover and sup.handover.available),
                     "skipped_messages": sum(intake.handed_over_skipped for intake in sup.intakes)},
        "recent_rejections": [r for intake in sup.intakes for r in intake.recent_rejections][-20:],
        "recent_errors": sup.stats.recent_errors[-20:],
    }


def build_handlers(sup: "Supervisor") -> dict[str, Callable[[dict], dict]]:
    def check(_req: dict) -> dict:
        ok, reasons = health(sup)
        return {"healthy": ok, "reasons": reasons, "state": sup.state.value, "pid": os.getpid()}

    def stop(_req: dict) -> dict:
        sup.request_stop("omsctl stop")
        return {"pid": os.getpid()}

    def failed(_req: dict) -> dict:
        return {"files": sup.registry.failed()}

    def retry(req: dict) -> dict:
        path, everything = req.get("path"), bool(req.get("all"))
        if not path and not everything:
            raise CommandError("retry needs a path or all=true")
        return {"queued": sup.jobs.retry_failed(lambda row: everything or row["path"] == path)}

    return {"check": check, "status": lambda _req: status(sup), "stop": stop, "failed": failed, "retry": retry}
