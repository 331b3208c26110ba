"""The supervisor: one main loop owning Kafka, the worker pool, the control socket and signals.

    while running:
        handle_signals()        # handlers only recorded them
        read_chunks()           # consumers → staging → completed files → worker slots
        handle_worker_events()  # step outcomes, results, produced messages
        manage_workers()        # reap the dead, restart with backoff, dispatch
        housekeeping()          # expiry, backpressure, commits, heartbeats, control socket, watchdog
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import structlog
from confluent_kafka import KafkaError

from omsd import exitcodes
from omsd.dispatch.backpressure import drained, saturated
from omsd.config import Config, PipelineConfig
from omsd.control.handlers import build_handlers
from omsd.control.server import ControlServer
from omsd.crypto.node import CryptoError, CryptoNode
from omsd.intake.handover import HandoverLog
from omsd.telemetry.heartbeat import HeartbeatSchedule, heartbeat_message
from omsd.intake.consumer import Intake
from omsd.intake.flow import PauseReason
from omsd.dispatch.jobs import FileJobs
from omsd.kafka import KAFKA_LOG, admin_config, make_producer
from omsd.telemetry.logtopic import LogTopicHandler, log_message
from omsd.report import assess_health, status_line, status_report
from omsd.telemetry.metrics import Metrics
from omsd.telemetry.progress import ProgressLog, total_lag
from omsd.telemetry.statuspage import StatusBoard
from omsd.dispatch.queue import DispatchPolicy
from omsd.dispatch.pool import WorkerBootError, WorkerPool
from omsd.heap import settle_heap
from omsd.registry import Registry, RegistryDamaged
from omsd.statewrites import StateWrites, is_no_space
from omsd.intake.staging import Staging
from omsd.states import DaemonState, transition
from omsd.telemetry.totals import Stats
from omsd.telemetry.systemd import Notifier, watchdog_interval
from workers.messages import MessageKind

log = structlog.get_logger(__name__)

POLL_TIMEOUT_S = 0.1
WORKING_WAIT_S = 0.005  # while workers are busy and Kafka has nothing: wait on them this long between polls
STATUS_EVERY_S = 10.0
RETRY_SCAN_EVERY_S = 30.0
LAG_EVERY_S = 15.0


class Supervisor:
    """The daemon. ``run()`` returns an exit code from :mod:`omsd.exitcodes`."""

    def __init__(self, config: Config, registry: Registry, *, log_json: bool | None = None,
                 progress: ProgressLog | None = None, control: ControlServer | None = None) -> None:
        """Build every part (nothing runs yet: :meth:`start` opens, binds, subscribes and spawns).

        ``registry``: already open (:func:`omsd.spacewait.open_registry_when_space` opens it first, so a
        damaged one stops the daemon before anything else exists). ``control``: a control server already
        listening (the wait's), which then answers with this supervisor's handlers.
        """
        cfg = self.config = config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        try:  # the KafkaCrypto node, with a kafkacrypto section: its key exchange runs in its own thread
            self.crypto = CryptoNode(cfg.kafkacrypto, admin_config(cfg)) if cfg.kafkacrypto is not None else None
        except CryptoError:  # a configuration problem (exit 78), raised before any Kafka client exists
            self.registry.close()
            raise
        self.log_json = log_json
        self._state = DaemonState.STARTING  # changed only by _move_to, through the transition table
        self.signals: list[int] = []
        self.started = time.time()
        self.exit_code = exitcodes.RET_OK
        self.stop_deadline: float | None = None
        self.drain_timed_out = False
        self.ready_sent = False
        interval = watchdog_interval()
        self.watchdog_every = interval / 2 if interval else 1.0
        self.next_watchdog = 0.0
        self.stats = Stats()
        self.notifier = Notifier()
        self.writes = StateWrites(cfg.state_dir)
        self.staging = Staging(cfg.state_dir, cfg.staging.memory_bytes, reserve_bytes=cfg.state_reserve_bytes)
        self.metrics = Metrics()
        # Opened in a thread at start (and checked at each assignment): start-up does not wait for the broker.
        self.handover = HandoverLog(cfg, cfg.handover_topic) if cfg.handover_topic else None
        self.groups: dict[str, list[PipelineConfig]] = {}
        for pipeline in cfg.pipelines:
            self.groups.setdefault(cfg.group_for(pipeline), []).append(pipeline)
        self.intakes = [Intake(cfg, group, pipelines, self.staging, self.registry, self._count_read,
                               on_reject=self.metrics.message_rejected, on_error=self._on_kafka_error,
                               before_revoke=self.finish_revoked, handover=self.handover, crypto=self.crypto)
                        for group, pipelines in self.groups.items()]
        self.pool = WorkerPool(cfg.workers, [_pipeline_spec(p, cfg.step_timeout_secs) for p in cfg.pipelines],
                               log_json=log_json, policy=DispatchPolicy(cfg.dispatch))
        self.producer = make_producer(cfg, polled=True, on_error=self._on_kafka_error)
        self.jobs = FileJobs(registry=self.registry, staging=self.staging, pool=self.pool, metrics=self.metrics,
                             stats=self.stats, produce=self._produce, failed_dir=cfg.state_dir / "failed",
                             pipelines=cfg.pipelines, writes=self.writes)
        self.control = control or ControlServer(cfg.control_socket, {})
        self.control.handlers = build_handlers(self)
        self.heartbeat = HeartbeatSchedule(cfg.heartbeat.interval_secs) if cfg.heartbeat else None
        self.log_handler = LogTopicHandler(cfg.log.level) if cfg.log else None
        self.log_schedule = HeartbeatSchedule(cfg.log.interval_secs) if cfg.log else None
        self.status_schedule = HeartbeatSchedule(STATUS_EVERY_S)
        self.progress = progress or ProgressLog()
        self.status_board = StatusBoard()  # the status page asks through it; the main loop answers
        self.retry_schedule = HeartbeatSchedule(min(RETRY_SCAN_EVERY_S, max(1.0, cfg.retry_failed_after_secs)))
        self.lag_schedule = HeartbeatSchedule(LAG_EVERY_S) if cfg.metrics_port is not None else None

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        self._install_signal_handlers()  # first: a stop during start-up is still graceful
        self.staging.open()
        if cfg.metrics_port is not None:
            # Before joining the group: a busy port fails start-up. The status page is served there too.
            self.metrics.start_http(cfg.metrics_port, status=self.status_board)
        # Subscribe first: the group join (about a second) overlaps with the workers' start-up. Nothing is
        # read before the main loop polls.
        for intake in self.intakes:
            intake.subscribe()
        if self.handover is not None:
            self.handover.open_in_background()  # meanwhile too, in a thread: the first assignment waits less
        self.pool.start()
        if not self.control.listening:
            self.control.start()
        if self.log_handler is not None:
            self.log_handler.install()
        settle_heap()  # while the group join runs
        self._move_to(DaemonState.RUNNING)
        log.info("omsd started", pid=os.getpid(), workers=cfg.workers,
                 pipelines=[p.name for p in cfg.pipelines], groups=list(self.groups))

    @property
    def state(self) -> DaemonState:
        return self._state

    def _move_to(self, new: DaemonState) -> None:
        self._state = transition(self._state, new, "daemon")

    def _install_signal_handlers(self) -> None:
        def record(signum: int, _frame: object) -> None:
            self.signals.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, record)

    def _on_kafka_error(self, err: KafkaError) -> None:
        self.stats.error(f"kafka: {err.str()}")  # listed by `omsctl status`; KAFKA_LOG follows the brokers

    def _count_read(self, n_bytes: int) -> None:
        self.stats.read(n_bytes)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.start()
            while self.state in (DaemonState.RUNNING, DaemonState.DRAINING):
                if self.registry.damaged is not None:  # seen by a query whose caller carried on (control socket)
                    raise self.registry.damaged
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
        except RegistryDamaged as exc:
            self.exit_code = report_damaged_registry(exc)
        except Exception as exc:  # noqa: BLE001 - logged; the stop below still runs in order
            if is_no_space(exc):  # outside the writes that wait for space (start-up: spill directory, socket)
                log.error(f"no space left: {exc}; stopping — free space in {self.config.state_dir} and start again")
            else:
                log.exception("supervisor failed; stopping")
            self.exit_code = exitcodes.RET_ERROR
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
                self._move_to(DaemonState.STOPPING)
                return
            self.request_stop(f"{name} received")

    def request_stop(self, why: str, timeout: float | None = None) -> None:
        """Begin the graceful stop: no new fetches, in-flight work may finish within the timeout
        (``timeout`` seconds when given, else ``shutdown_timeout_secs``)."""
        if self.state is not DaemonState.RUNNING:
            return
        log.info("graceful stop requested", reason=why)
        self.notifier.stopping(status=f"stopping: {why}")
        self._move_to(DaemonState.DRAINING)
        self.stop_deadline = time.monotonic() + (self.config.shutdown_timeout_secs if timeout is None else timeout)
        for intake in self.intakes:
            intake.flow.pause(PauseReason.STOPPING)
        # Files not yet started are handed back: their offsets stay held, so a restart reads them again.
        self.pool.waiting.clear()

    def _drained(self) -> bool:
        if self.pool.pending() == 0 and not self.jobs.waiting_for_acks() and not self.writes.blocked:
            return True
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            log.warning("graceful stop timed out; in-flight files will be read again on restart")
            self.drain_timed_out = True
            return True
        return False

    def read_chunks(self) -> None:
        """Poll every consumer (paused ones too: polling keeps the group membership alive).

        A consumer whose files are queueing up (see :meth:`_apply_backpressure`) is briefly not polled:
        librdkafka's bounded prefetch then stops fetching by itself, without the purge and re-fetch
        that pausing its partitions costs. The loop waits for worker reports instead.
        """
        # While workers hold files, their reports (and their need for the next file) must not wait for a
        # Kafka poll to time out: the consumers are only looked at, and the wait is on the workers' pipes.
        working = self.pool.pending() > 0
        timeout = 0.0 if working else POLL_TIMEOUT_S / max(1, len(self.intakes))
        polled = read = False
        for intake in self.intakes:
            if not intake.flow.polled():
                continue
            polled = True
            before = intake.messages_read
            self.jobs.files_complete(intake, intake.poll(timeout))  # registered in one transaction
            read = read or intake.messages_read != before
        if not polled:
            self.pool.wait(POLL_TIMEOUT_S)
        elif working and not read:
            self.pool.wait(WORKING_WAIT_S)

    # -- worker reports --------------------------------------------------------------------------
    def handle_worker_events(self) -> None:
        for slot, message in self.pool.events(timeout=0):
            if message.kind is MessageKind.STEP:
                self.jobs.on_step(message)
            elif message.kind is MessageKind.RESULT:
                self.jobs.on_result(message)
            elif message.kind is MessageKind.BOOT_FAILED:
                self.stats.error(f"worker {slot.index} failed to boot: {message.error}")
        self.producer.poll(0)
        self.jobs.flush()  # this turn's outcomes, recorded in one transaction

    def _produce(self, topic: str, key: str, value: bytes, callback: object) -> None:
        """Every message omsd sends (results, metadata, heartbeats, logs); encrypted with a kafkacrypto node."""
        if self.crypto is not None:
            key, value = self.crypto.encrypt(topic, key, value)
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=callback)
                return
            except BufferError:
                self.producer.poll(0.05)

    # -- workers -----------------------------------------------------------------------------------
    def manage_workers(self) -> None:
        self.pool.watch()  # murder_workers: a step past its time limit costs its worker
        for task in self.pool.reap():
            self.jobs.on_poison(task)
        for task, run in self.pool.take_timed_out():
            self.jobs.on_timeout(task, run, requeue=self.state is DaemonState.RUNNING)
        for task in self.pool.take_handed_back():  # waiting again after a worker died: skip the steps it finished
            self.jobs.refresh(task)
        restarts = [slot.restarts for slot in self.pool.slots]
        self.pool.manage()
        for slot, before in zip(self.pool.slots, restarts):
            if slot.restarts > before:
                self.metrics.worker_restarted(slot.index)
        self.pool.dispatch()

    # -- housekeeping ------------------------------------------------------------------------------
    def housekeeping(self) -> None:
        now = time.monotonic()
        KAFKA_LOG.tick()  # a broker's "unreachable" warning, repeated at a slow pace while it lasts
        for intake in self.intakes:
            for assembly in intake.assembler.expired(self.config.staging.expire_incomplete_secs, now):
                self.jobs.expired(assembly)
            self._apply_backpressure(intake)
            intake.commit()
        self._wait_for_space(now)
        if self.lag_schedule is not None and any(i.assigned for i in self.intakes) and self.lag_schedule.due(now):
            for intake in self.intakes:
                for (topic, partition), lag in intake.lag().items():
                    self.metrics.set_consumer_lag(topic, partition, lag)
        for intake in self.intakes:
            if intake.decryptor is not None:
                self.metrics.set_decryption(intake.group_id, intake.decryptor.store.count(), intake.decryptor.waiting())
        self.metrics.set_staging_bytes("memory", self.staging.memory_used)
        self.metrics.set_staging_bytes("kept", self.staging.memory_kept)
        self.metrics.set_staging_bytes("spill", self.staging.spill_used)
        self.control.poll(0)
        self.status_board.serve(self.status)
        if self.heartbeat is not None and self.heartbeat.due(now):
            key, value = heartbeat_message(self.config.heartbeat.program_id, self.stats.counters.snapshot_and_reset())
            self._produce(self.config.heartbeat.topic, key, value, None)
        if self.log_schedule is not None and self.log_schedule.due(now):
            self._send_logs()
        if self.ready_sent and self.status_schedule.due(now):
            self.notifier.status(status_line(intakes=self.intakes, staging=self.staging, pool=self.pool,
                                             stats=self.stats))
        self.progress.tick(self.stats.totals, lambda: total_lag(self.intakes))
        if self.config.retry_failed_after_secs > 0 and self.retry_schedule.due(now) \
                and self.state is DaemonState.RUNNING:
            cutoff = time.time() - self.config.retry_failed_after_secs
            self.jobs.retry_failed(lambda row: row["updated"] <= cutoff)
        if self.ready_sent and now >= self.next_watchdog and self.health()[0]:
            self.notifier.watchdog()
            self.next_watchdog = now + self.watchdog_every

    def _wait_for_space(self, now: float) -> None:
        """Retry the state writes that met a full disk; intake stays paused while any still waits."""
        self.writes.retry(now)
        for intake in self.intakes:
            if self.writes.blocked:
                intake.flow.pause(PauseReason.STATE_DIR_FULL)
            else:
                intake.flow.resume(PauseReason.STATE_DIR_FULL)

    def _send_logs(self) -> None:
        if self.log_handler is None or self.config.log is None:
            return
        messages = self.log_handler.drain()
        if messages:
            key, value = log_message(self.config.log.program_id, messages)
            self._produce(self.config.log.topic, key, value, None)

    # -- what the control socket sees (omsd.control.handlers.DaemonView) ---------------------------------
    def health(self) -> tuple[bool, list[str]]:
        return assess_health(pool=self.pool, intakes=self.intakes, staging=self.staging,
                             broker_down_since=KAFKA_LOG.unreachable_since, uptime_s=time.time() - self.started,
                             disk=self.writes.describe())

    def status(self) -> dict:
        return status_report(state=self.state, uptime_s=time.time() - self.started, config=self.config,
                             intakes=self.intakes, staging=self.staging, pool=self.pool, stats=self.stats,
                             handover=self.handover, disk=self.writes.describe(), failed=self.registry.failed(),
                             history=self.metrics.history.snapshot(p.name for p in self.config.pipelines))

    def failed_files(self) -> list[dict]:
        return self.registry.failed()

    def retry_failed(self, wanted: Callable[[dict], bool]) -> int:
        return self.jobs.retry_failed(wanted)

    def undecryptable_messages(self) -> list[dict]:
        return [{"group": i.group_id, **m.describe()} for i in self.intakes if i.decryptor
                for m in i.decryptor.store.entries()]

    def retry_undecryptable(self) -> int:
        return sum(i.decryptor.retry_kept() for i in self.intakes if i.decryptor)

    def finish_revoked(self, intake: Intake, tps: set[tuple[str, int]]) -> None:
        """Partitions are being revoked: let completed files from them finish first (bounded), so the
        commit that follows moves past them and the new owner does not process them again."""
        deadline = time.monotonic() + self.config.shutdown_timeout_secs
        while self.jobs.holding(intake, tps) and time.monotonic() < deadline and self.state is not DaemonState.STOPPING:
            self.handle_worker_events()
            self.manage_workers()
            time.sleep(0.01)
        if self.jobs.holding(intake, tps) and self.state is not DaemonState.STOPPING:
            log.warning("partitions revoked while files were still being processed; the new owner will "
                        "process them again", group=intake.group_id, partitions=sorted(tps))

    def _apply_backpressure(self, intake: Intake) -> None:
        if self.state is not DaemonState.RUNNING:
            return
        backlog = self.pool.backlog()
        budget = self.config.staging.memory_bytes
        if saturated(backlog, budget):
            intake.flow.workers_saturated(time.monotonic())
        elif drained(backlog, budget):
            intake.flow.workers_drained()

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
        if self.state is not DaemonState.STOPPING:  # a second signal may have moved there already
            self._move_to(DaemonState.STOPPING)
        self.notifier.stopping(status="stopping")
        for intake in self.intakes:
            try:
                intake.close()
            except Exception as exc:  # noqa: BLE001 - keep stopping whatever happens
                log.warning("consumer close failed", group=intake.group_id, error=str(exc))
        if self.handover is not None:
            self.handover.close()
        if self.log_handler is not None:
            self._send_logs()
            self.log_handler.remove()
        left = self.producer.flush(10)
        if left:
            log.warning("messages not delivered at stop", count=left)
        self.jobs.flush()  # outcomes whose last result message was acknowledged just now
        if self.crypto is not None:
            self.crypto.close()  # after the producer: nothing more is encrypted
        # After a timed-out drain the busy workers are stopped at once: their files were handed back.
        self.pool.stop(timeout=0.5 if self.drain_timed_out else 5)
        for intake in self.intakes:
            intake.assembler.discard_all()
        self.jobs.release_all()
        self.staging.close()  # the segments kept for reuse too
        self.registry.close()
        self.control.close()
        self.metrics.stop_http()
        self._move_to(DaemonState.STOPPED)
        log.info("omsd stopped", exit_code=self.exit_code)


def _pipeline_spec(pipeline: PipelineConfig, step_timeout_s: float | None) -> dict:
    """What a worker needs to build a pipeline's runner (plain data, picklable)."""
    return {"name": pipeline.name, "topic": pipeline.topic, "steps": pipeline.steps, "retries": pipeline.retries,
            "step_timeout_s": step_timeout_s}


def report_damaged_registry(exc: RegistryDamaged) -> int:
    """No outcome can be recorded: stop (offsets stay below every unrecorded outcome), never restart."""
    log.error(f"registry damaged: {exc.path}: {exc.detail}; {exc.advice}", path=str(exc.path))
    return exitcodes.RET_REGISTRY_DAMAGED
