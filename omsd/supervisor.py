"""The supervisor: one main loop owning Kafka, the worker pool, the control socket and signals.

    while running:
        handle_signals()        # handlers only recorded them
        read_chunks()           # consumers → staging → completed files → worker slots
        handle_worker_events()  # step outcomes, results, produced messages
        manage_workers()        # reap the dead, restart with backoff, dispatch
        housekeeping()          # expiry, backpressure, commits, heartbeats, control socket, watchdog
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import KafkaError

from omsd import exitcodes
from omsd.assembly import FileAssembly
from omsd.config import Config, PipelineConfig
from omsd.control.server import CommandError, ControlServer
from omsd.heartbeat import Counters, HeartbeatSchedule, heartbeat_message
from omsd.intake import Intake
from omsd.kafka import make_producer
from omsd.logtopic import LogTopicHandler, log_message
from omsd.metrics import Metrics
from omsd.pool import Task, WorkerBootError, WorkerPool
from omsd.registry import Registry
from omsd.staging import Staging
from omsd.states import DaemonState
from omsd.systemd import Notifier, watchdog_interval

log = structlog.get_logger(__name__)

POLL_TIMEOUT_S = 0.1
STATUS_EVERY_S = 10.0
RETRY_SCAN_EVERY_S = 30.0
RECENT_DEATH_S = 30.0
BROKER_DOWN_GRACE_S = 10.0


@dataclass
class FileJob:
    """A completed (or kept, for a retry) file while workers process it."""

    intake: Intake | None
    assembly: FileAssembly | None
    record_id: int
    topic: str
    relative_path: str
    size: int
    pipelines: list[PipelineConfig]
    kept_path: str | None = None
    pending_acks: int = 0
    step_failures: dict[str, str] = field(default_factory=dict)
    result: dict | None = None


class Supervisor:
    """The daemon. ``run()`` returns an exit code from :mod:`omsd.exitcodes`."""

    def __init__(self, config: Config, *, log_json: bool | None = None) -> None:
        self.config = config
        self.log_json = log_json
        self.state = DaemonState.STARTING
        self.signals: list[int] = []
        self.started = time.time()
        self.exit_code = exitcodes.RET_OK
        self.counters = Counters()
        self.totals = {"messages_read": 0, "bytes_read": 0, "files_completed": 0, "files_failed": 0,
                       "messages_produced": 0, "bytes_produced": 0}
        self.recent_errors: list[dict] = []
        self.notifier = Notifier()
        self.task_ids = itertools.count(1)
        self.broker_down_since: float | None = None
        self.stop_deadline: float | None = None
        self._jobs: dict[int, FileJob] = {}
        self.ready_sent = False
        interval = watchdog_interval()
        self.watchdog_every = interval / 2 if interval else 1.0
        self.next_watchdog = 0.0

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        self._install_signal_handlers()  # first: a stop during start-up is still graceful
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(cfg.state_dir / "registry.sqlite")
        self.staging = Staging(cfg.state_dir, cfg.staging.memory_bytes)
        self.staging.open()
        self.failed_dir = cfg.state_dir / "failed"
        self.pool = WorkerPool(cfg.workers, [_pipeline_spec(p) for p in cfg.pipelines], log_json=self.log_json)
        self.pool.start()
        self.producer = make_producer(cfg, error_cb=self._on_kafka_error)
        groups: dict[str, list[PipelineConfig]] = {}
        for pipeline in cfg.pipelines:
            groups.setdefault(cfg.group_for(pipeline), []).append(pipeline)
        self.metrics = Metrics()
        if cfg.metrics_port is not None:
            self.metrics.start_http(cfg.metrics_port)
        self.intakes = [Intake(cfg, group, pipelines, self.staging, self.registry, self._count_read,
                               on_reject=self.metrics.message_rejected, on_error=self._on_kafka_error,
                               before_revoke=self.finish_revoked)
                        for group, pipelines in groups.items()]
        for intake in self.intakes:
            intake.subscribe()
        self.control = ControlServer(cfg.control_socket, self._handlers())
        self.control.start()
        self.heartbeat = HeartbeatSchedule(cfg.heartbeat.interval_secs) if cfg.heartbeat else None
        self.log_handler = LogTopicHandler(cfg.log.level).install() if cfg.log else None
        self.log_schedule = HeartbeatSchedule(cfg.log.interval_secs) if cfg.log else None
        self.status_schedule = HeartbeatSchedule(STATUS_EVERY_S)
        self.retry_schedule = HeartbeatSchedule(RETRY_SCAN_EVERY_S)
        self.state = DaemonState.RUNNING
        log.info("omsd started", pid=os.getpid(), workers=cfg.workers,
                 pipelines=[p.name for p in cfg.pipelines], groups=list(groups))

    def _install_signal_handlers(self) -> None:
        def record(signum: int, _frame: object) -> None:
            self.signals.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, record)

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.broker_down_since is None:
                self.broker_down_since = time.monotonic()
        self._error(f"kafka: {err.str()}")

    def _error(self, message: str) -> None:
        self.recent_errors = (self.recent_errors + [{"time": time.time(), "message": message}])[-50:]

    def _count_read(self, n_bytes: int) -> None:
        self.counters.add_read(n_bytes)
        self.totals["messages_read"] += 1
        self.totals["bytes_read"] += n_bytes
        self.broker_down_since = None

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.start()
        except WorkerBootError as exc:
            log.error("workers cannot boot", error=str(exc))
            return exitcodes.RET_WORKER_BOOT
        try:
            while self.state in (DaemonState.RUNNING, DaemonState.DRAINING):
                self.handle_signals()
                self.read_chunks()
                self.handle_worker_events()
                self.manage_workers()
                self.housekeeping()
                if not self.ready_sent and self.pool.alive():
                    self.ready_sent = True
                    self.notifier.ready(status=f"consuming with {len(self.pool.slots)} workers")
                if self.state is DaemonState.DRAINING and self._drained():
                    break
        except WorkerBootError as exc:
            log.error("workers cannot boot; stopping", error=str(exc))
            self.exit_code = exitcodes.RET_WORKER_BOOT
        finally:
            self.shutdown()
        return self.exit_code

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("SIGHUP: nothing to reload; use a restart to change the configuration")
                continue
            if self.state is DaemonState.DRAINING:
                log.warning(f"second {name}: stopping now; in-flight files will be read again on restart")
                self.exit_code = exitcodes.RET_KILLED
                self.state = DaemonState.STOPPING
                return
            self.request_stop(f"{name} received")

    def request_stop(self, why: str) -> None:
        """Begin the graceful stop: no new fetches, in-flight work may finish within the timeout."""
        if self.state is not DaemonState.RUNNING:
            return
        log.info("graceful stop requested", reason=why)
        self.notifier.stopping(status=f"stopping: {why}")
        self.state = DaemonState.DRAINING
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout_secs
        for intake in self.intakes:
            intake.pause("stopping")
        # Files not yet started are handed back: their offsets stay held, so a restart reads them again.
        for slot in self.pool.slots:
            slot.queue.clear()

    def _drained(self) -> bool:
        if self.pool.pending() == 0 and not self._jobs_waiting():
            return True
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            log.warning("graceful stop timed out; in-flight files will be read again on restart")
            return True
        return False

    def _jobs_waiting(self) -> bool:
        return any(job.result is not None and job.pending_acks for job in self._jobs.values())

    def read_chunks(self) -> None:
        """Poll every consumer (paused ones too: polling keeps the group membership alive)."""
        timeout = POLL_TIMEOUT_S / max(1, len(self.intakes))
        if self.pool.busy():
            timeout = min(timeout, 0.01)  # worker results are waiting to be handled
        for intake in self.intakes:
            for assembly in intake.poll(timeout):
                self.on_file_complete(intake, assembly)

    # -- completed files ---------------------------------------------------------------------------
    def on_file_complete(self, intake: Intake, assembly: FileAssembly) -> None:
        """A file has all its chunks: register it and hand it to its worker slot."""
        chunk = assembly.chunk
        pipelines = intake.pipelines_for(assembly.topic, assembly.relative_path)
        record = self.registry.register(assembly.topic, assembly.relative_path, chunk.file_hash.hex(),
                                        assembly.staged.size)
        finished = self.registry.finished_pipelines(record.id)
        todo = [p for p in pipelines if p.name not in finished]
        if not todo:
            intake.assembler.discard(assembly)
            intake.mark_finished(assembly.key)
            return
        job = FileJob(intake=intake, assembly=assembly, record_id=record.id, topic=assembly.topic,
                      relative_path=assembly.relative_path, size=assembly.staged.size, pipelines=todo)
        self._submit(job, assembly.staged.path, chunk)

    def _submit(self, job: FileJob, path: str, chunk: object) -> None:
        task_id = next(self.task_ids)
        self._jobs[task_id] = job
        payload = {
            "task_id": task_id,
            "ref": {"path": path, "size": job.size},
            "file": {"relative_path": job.relative_path, "subdir_str": chunk.subdir_str,  # type: ignore[attr-defined]
                     "filename": chunk.filename, "file_hash": chunk.file_hash,  # type: ignore[attr-defined]
                     "file_mtime": chunk.file_mtime, "topic": job.topic,  # type: ignore[attr-defined]
                     "filename_append": chunk.filename_append},  # type: ignore[attr-defined]
            "pipelines": [p.name for p in job.pipelines],
            "done": self.registry.done_steps(job.record_id),
        }
        self.pool.submit(Task(task_id=task_id, relative_path=job.relative_path, payload=payload))

    def handle_worker_events(self) -> None:
        for slot, message, task in self.pool.events(timeout=0):
            kind = message.get("type")
            if kind == "step":
                self._on_step(message["task_id"], message["outcome"])
            elif kind == "result":
                job = self._jobs.get(message["task_id"])
                if job is not None:
                    job.result = message
                    self._try_finish(message["task_id"])
            elif kind == "boot_failed":
                self._error(f"worker {slot.index} failed to boot: {message.get('error')}")
        self.producer.poll(0)

    def _on_step(self, task_id: int, outcome: dict) -> None:
        job = self._jobs.get(task_id)
        if job is None:
            return
        messages = outcome.get("messages") or []
        if outcome["status"] != "done" or not messages:
            self._record_step(job, outcome, outcome["status"], outcome.get("error"))
            return
        remaining = {"n": len(messages), "error": None}

        def delivered(err: KafkaError | None, msg: object) -> None:
            if err is not None:
                remaining["error"] = f"result message not delivered: {err.str()}"
            else:
                self.counters.add_produced(len(msg.value() or b""))  # type: ignore[attr-defined]
                self.totals["messages_produced"] += 1
                self.totals["bytes_produced"] += len(msg.value() or b"")  # type: ignore[attr-defined]
            remaining["n"] -= 1
            job.pending_acks -= 1
            if remaining["n"] == 0:
                status = "failed" if remaining["error"] else "done"
                self._record_step(job, outcome, status, remaining["error"])
                self._try_finish(task_id)

        for topic, key, value in messages:
            job.pending_acks += 1
            self._produce(topic, key, value, delivered)

    def _produce(self, topic: str, key: str, value: bytes, callback: object) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=callback)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _record_step(self, job: FileJob, outcome: dict, status: str, error: str | None) -> None:
        self.registry.record_step(job.record_id, outcome["pipeline"], outcome["index"], outcome["kind"], status,
                                  outcome["attempts"], error, outcome.get("duration_s") or 0.0)
        self.metrics.observe_step(outcome["pipeline"], outcome["kind"], outcome.get("duration_s") or 0.0)
        if status == "failed":
            job.step_failures[outcome["pipeline"]] = f"{outcome['kind']} (step {outcome['index'] + 1}): {error}"
            self._error(f"{job.relative_path}: {outcome['pipeline']}/{outcome['kind']}: {error}")

    def _try_finish(self, task_id: int) -> None:
        """Record a file's outcome durably, then free its staging and release its offsets."""
        job = self._jobs.get(task_id)
        if job is None or job.result is None or job.pending_acks > 0:
            return
        del self._jobs[task_id]
        result = job.result
        status = result.get("status")
        if status == "ok":
            for pipeline in job.pipelines:
                ok = result["pipelines"].get(pipeline.name) and pipeline.name not in job.step_failures
                error = None if ok else job.step_failures.get(pipeline.name, "failed")
                self.registry.record_pipeline(job.record_id, pipeline.name, "done" if ok else "failed", error)
                self._count_pipeline(pipeline.name, bool(ok), job.size)
            failed = [p.name for p in job.pipelines if p.name in job.step_failures
                      or not result["pipelines"].get(p.name)]
            self._finish(job, "failed" if failed else "done", "; ".join(job.step_failures.values()) or None,
                         keep=bool(failed))
        else:
            error = result.get("error") or status
            for pipeline in job.pipelines:
                self.registry.record_pipeline(job.record_id, pipeline.name, "failed", error)
                self._count_pipeline(pipeline.name, False, job.size)
            self._finish(job, "failed", error, keep=status != "hash_mismatch")

    def _count_pipeline(self, pipeline: str, ok: bool, size: int) -> None:
        if ok:
            self.metrics.file_completed(pipeline, size)
        else:
            self.metrics.file_failed(pipeline)

    def _finish(self, job: FileJob, status: str, error: str | None, *, keep: bool) -> None:
        kept = None
        if keep and job.assembly is not None:
            kept_path = self.failed_dir / f"{job.record_id}"
            self.staging.keep(job.assembly.staged, kept_path)
            kept = str(kept_path)
        self.registry.set_status(job.record_id, status, error, kept_path=kept)
        if status == "done":
            self.totals["files_completed"] += 1
            self.counters.add_processed(job.size)
            if job.kept_path:
                Path(job.kept_path).unlink(missing_ok=True)
        else:
            self.totals["files_failed"] += 1
            log.error("file failed", path=job.relative_path, topic=job.topic, error=error)
        if job.assembly is not None and job.intake is not None:
            job.intake.assembler.discard(job.assembly)
            job.intake.mark_finished(job.assembly.key)

    # -- workers -----------------------------------------------------------------------------------
    def manage_workers(self) -> None:
        for task in self.pool.reap():
            job = self._jobs.pop(task.task_id, None)
            if job is None:
                continue
            error = f"poison: the file killed its worker {task.deaths} times"
            for pipeline in job.pipelines:
                self.registry.record_pipeline(job.record_id, pipeline.name, "failed", error)
            self._finish(job, "failed", error, keep=True)
        restarts = [slot.restarts for slot in self.pool.slots]
        self.pool.manage()
        for slot, before in zip(self.pool.slots, restarts):
            if slot.restarts > before:
                self.metrics.worker_restarted(slot.index)
        self.pool.dispatch()

    # -- housekeeping ------------------------------------------------------------------------------
    def housekeeping(self) -> None:
        now = time.monotonic()
        for intake in self.intakes:
            for assembly in intake.assembler.expired(self.config.staging.expire_incomplete_secs, now):
                log.warning("incomplete file expired", path=assembly.relative_path, topic=assembly.topic,
                            chunks_received=len(assembly.received), chunks_total=assembly.n_total)
                self.registry.record_rejected_file(assembly.topic, assembly.relative_path,
                                                   assembly.chunk.file_hash.hex(), "expired",
                                                   f"{len(assembly.received)}/{assembly.n_total} chunks")
            self._apply_backpressure(intake)
            intake.commit()
        self.metrics.set_staging_bytes("memory", self.staging.memory_used)
        self.metrics.set_staging_bytes("spill", self.staging.spill_used)
        self.control.poll(0)
        if self.heartbeat is not None and self.heartbeat.due(now):
            key, value = heartbeat_message(self.config.heartbeat.program_id, self.counters.snapshot_and_reset())
            self._produce(self.config.heartbeat.topic, key, value, None)
        if self.log_schedule is not None and self.log_schedule.due(now):
            self._send_logs()
        if self.ready_sent and self.status_schedule.due(now):
            self.notifier.status(self._status_line())
        if self.config.retry_failed_after_secs > 0 and self.retry_schedule.due(now) \
                and self.state is DaemonState.RUNNING:
            cutoff = time.time() - self.config.retry_failed_after_secs
            self.retry_failed(lambda row: row["updated"] <= cutoff)
        if self.ready_sent and now >= self.next_watchdog and self.healthy()[0]:
            self.notifier.watchdog()
            self.next_watchdog = now + self.watchdog_every

    def _send_logs(self) -> None:
        if self.log_handler is None or self.config.log is None:
            return
        messages = self.log_handler.drain()
        if messages:
            key, value = log_message(self.config.log.program_id, messages)
            self._produce(self.config.log.topic, key, value, None)

    def _status_line(self) -> str:
        totals = self.totals
        in_progress = sum(len(i.assembler.files) for i in self.intakes)
        return (f"{totals['files_completed']} files done, {totals['files_failed']} failed, {in_progress} assembling, "
                f"{self.pool.pending()} queued; staging {self.staging.memory_used >> 20} MiB memory, "
                f"{self.staging.spill_used >> 20} MiB spill")

    def finish_revoked(self, intake: Intake, tps: set[tuple[str, int]]) -> None:
        """Partitions are being revoked: let completed files from them finish first (bounded), so the
        commit that follows moves past them and the new owner does not process them again."""
        def waiting() -> bool:
            return any(job.intake is intake and job.assembly is not None and job.assembly.partitions & tps
                       for job in self._jobs.values())

        deadline = time.monotonic() + self.config.shutdown_timeout_secs
        while waiting() and time.monotonic() < deadline and self.state is not DaemonState.STOPPING:
            self.handle_worker_events()
            self.manage_workers()
            time.sleep(0.01)
        if waiting():
            log.warning("partitions revoked while files were still being processed; the new owner will "
                        "process them again", group=intake.group_id, partitions=sorted(tps))

    def _apply_backpressure(self, intake: Intake) -> None:
        if self.state is not DaemonState.RUNNING:
            return
        limit = max(4, 4 * len(self.pool.slots))
        if self.pool.pending() >= limit:
            intake.pause("workers_busy")
        elif self.pool.pending() <= limit // 2:
            intake.resume("workers_busy")

    # -- health and status -------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, list[str]]:
        reasons = []
        now = time.monotonic()
        for slot in self.pool.slots:
            if slot.state.value != "RUNNING":
                reasons.append(f"worker slot {slot.index} is {slot.state.value}")
            elif slot.last_death is not None and now - slot.last_death < RECENT_DEATH_S:
                reasons.append(f"worker slot {slot.index} died {now - slot.last_death:.0f}s ago")
        if self.broker_down_since is not None and time.monotonic() - self.broker_down_since > 1.0:
            reasons.append(f"broker unreachable for {time.monotonic() - self.broker_down_since:.0f}s")
        if self.staging.memory_used > self.staging.memory_budget:
            reasons.append("staging memory above its budget")
        for intake in self.intakes:
            if "staging_full" in intake.pause_reasons:
                reasons.append(f"staging disk full; consumer group {intake.group_id} paused")
        uptime = time.time() - self.started
        for intake in self.intakes:
            if not intake.assigned and uptime > 30:
                reasons.append(f"consumer group {intake.group_id} has no partitions assigned")
        return not reasons, reasons

    def status(self) -> dict:
        now = time.monotonic()
        rejected: dict[str, int] = {}
        for intake in self.intakes:
            for reason, count in intake.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        return {
            "pid": os.getpid(), "state": self.state.value, "uptime_s": round(time.time() - self.started, 1),
            "pipelines": [{"name": p.name, "topic": p.topic, "group": self.config.group_for(p)}
                          for p in self.config.pipelines],
            "partitions": [row for intake in self.intakes for row in intake.describe_partitions()],
            "in_progress": [a.describe(now) for intake in self.intakes for a in intake.assembler.files.values()],
            "staging": self.staging.snapshot(),
            "workers": self.pool.describe(),
            "totals": dict(self.totals),
            "rejected": rejected,
            "recent_rejections": [r for intake in self.intakes for r in intake.recent_rejections][-20:],
            "recent_errors": self.recent_errors[-20:],
        }

    def _handlers(self) -> dict:
        def check(_req: dict) -> dict:
            ok, reasons = self.healthy()
            return {"healthy": ok, "reasons": reasons, "state": self.state.value, "pid": os.getpid()}

        def stop(_req: dict) -> dict:
            self.request_stop("omsctl stop")
            return {"pid": os.getpid()}

        def failed(_req: dict) -> dict:
            return {"files": self.registry.failed()}

        def retry(req: dict) -> dict:
            path, everything = req.get("path"), bool(req.get("all"))
            if not path and not everything:
                raise CommandError("retry needs a path or all=true")
            return {"queued": self.retry_failed(lambda row: everything or row["path"] == path)}

        return {"check": check, "status": lambda _req: self.status(), "stop": stop, "failed": failed,
                "retry": retry}

    def retry_failed(self, wanted: Callable[[dict], bool]) -> int:
        """Queue failed files again from their kept bytes; returns how many were queued."""
        from omsd.protocol import Chunk

        queued = 0
        by_name = {p.name: p for p in self.config.pipelines}
        busy = {job.record_id for job in self._jobs.values()}
        for row in self.registry.failed():
            if not row["kept"] or row["file_id"] in busy or not wanted(row):
                continue
            record = self.registry.get(row["file_id"])
            if record is None or record.kept_path is None or not Path(record.kept_path).exists():
                continue
            pipeline = by_name.get(row["pipeline"])
            if pipeline is None:
                continue
            self.registry.clear_failure(record.id, pipeline.name)
            subdir, _, filename = record.rel_path.rpartition("/")
            header = Chunk(filename=filename, file_hash=bytes.fromhex(record.sha512), chunk_hash=b"", offset=0,
                           chunk_i=0, n_total_chunks=1, subdir_str=subdir, filename_append="", data=b"",
                           file_mtime=None)
            job = FileJob(intake=None, assembly=None, record_id=record.id, topic=record.topic,
                          relative_path=record.rel_path, size=Path(record.kept_path).stat().st_size,
                          pipelines=[pipeline], kept_path=record.kept_path)
            self._submit(job, record.kept_path, header)
            queued += 1
        return queued

    # -- stop --------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """The graceful-stop order, in one place:

        1. stop fetching (done by request_stop: partitions paused);
        2. in-flight files finished or handed back (the loop drained until the timeout);
        3. commit the safe offsets;
        4. flush the producer (results and heartbeats);
        5. stop the workers;
        6. free staging (shared memory and spill files), close the registry, remove the socket.
        """
        self.state = DaemonState.STOPPING
        self.notifier.stopping(status="stopping")
        for intake in getattr(self, "intakes", []):
            try:
                intake.close()
            except Exception as exc:  # noqa: BLE001 - keep stopping whatever happens
                log.warning("consumer close failed", group=intake.group_id, error=str(exc))
        if getattr(self, "log_handler", None) is not None:
            self._send_logs()
            self.log_handler.remove()
        if hasattr(self, "producer"):
            left = self.producer.flush(10)
            if left:
                log.warning("messages not delivered at stop", count=left)
        if hasattr(self, "pool"):
            self.pool.stop(timeout=5)
        for intake in getattr(self, "intakes", []):
            intake.assembler.discard_all()
        for job in list(self._jobs.values()):
            if job.assembly is not None:
                self.staging.release(job.assembly.staged)
        self._jobs.clear()
        if hasattr(self, "registry"):
            self.registry.close()
        if hasattr(self, "control"):
            self.control.close()
        if hasattr(self, "metrics"):
            self.metrics.stop_http()
        self.state = DaemonState.STOPPED
        log.info("omsd stopped", exit_code=self.exit_code)


def _pipeline_spec(pipeline: PipelineConfig) -> dict:
    """What a worker needs to build a pipeline's runner (plain data, picklable)."""
    return {"name": pipeline.name, "topic": pipeline.topic, "steps": pipeline.steps, "retries": pipeline.retries}
