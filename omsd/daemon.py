"""`omsd run` and `omsd download`: configuration, the state-directory lock, the supervisor."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from dataclasses import replace
from pathlib import Path

import structlog

from omsd import exitcodes
from omsd.config import Config, ConfigError, PipelineConfig, load_config
from omsd.crypto.settings import decrypt_overrides
from omsd.logging import configure_logging, use_log_level
from omsd.malloc import tune_malloc
from omsd.statewrites import is_no_space
from omsd.telemetry.progress import DEFAULT_EVERY_S, ProgressLog
from omsd.telemetry.options import resolve as resolve_telemetry
from workers.pipeline import validate_pipeline

log = structlog.get_logger(__name__)


class StateDirLocked(RuntimeError):
    """Another daemon is running on this state directory."""


def lock_state_dir(state_dir: Path) -> int:
    """Hold an exclusive lock on ``state_dir/omsd.lock`` for the life of the process."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "omsd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise StateDirLocked(f"another omsd (pid {holder or '?'}) is running on {state_dir}") from None
    os.ftruncate(fd, 0)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:  # the pid only informs a second daemon's message; a full disk is handled later
        if not is_no_space(exc):
            raise
    return fd


def serve(config: Config, *, progress_every_s: float = DEFAULT_EVERY_S) -> int:
    """Run the supervisor until it stops; returns the process exit code."""
    from omsd.crypto.node import CryptoError
    from omsd.kafka import check_client_configs
    from omsd.registry import RegistryDamaged
    from omsd.spacewait import open_registry_when_space
    from omsd.supervisor import Supervisor, report_damaged_registry

    try:
        check_client_configs(config)  # a misspelt librdkafka property stops us before anything is created
    except ConfigError as exc:
        print(f"omsd: configuration error: {exc}", file=sys.stderr)
        return exitcodes.RET_CONFIG
    tune_malloc()
    try:
        lock_fd = lock_state_dir(config.state_dir)
    except StateDirLocked as exc:
        print(f"omsd: {exc}", file=sys.stderr)
        return exitcodes.RET_LOCKED
    try:
        try:
            # First: a damaged registry stops the daemon before anything else exists; a full disk is waited out.
            opened = open_registry_when_space(config)
            if opened is None:  # stopped while waiting
                log.info("omsd stopped", exit_code=exitcodes.RET_OK)
                return exitcodes.RET_OK
            try:
                supervisor = Supervisor(config, opened.registry, progress=ProgressLog(progress_every_s),
                                        control=opened.control)
            except BaseException:
                if opened.control is not None:
                    opened.control.close()
                raise
        except RegistryDamaged as exc:
            code = report_damaged_registry(exc)
            log.info("omsd stopped", exit_code=code)
            return code
        except CryptoError as exc:
            log.error("cannot open the KafkaCrypto node", error=str(exc))
            return exitcodes.RET_CONFIG
        return supervisor.run()
    finally:
        os.close(lock_fd)


def run_command(args: argparse.Namespace) -> int:
    use_log_level(args.log_level)
    configure_logging(process="supervisor")
    try:
        # The one command that imports the pipelines' step functions: a step that cannot load is a config error.
        config = load_config(args.config, require_pipelines=True, validate_steps=validate_pipeline)
    except ConfigError as exc:
        print(f"omsd: configuration error: {exc}", file=sys.stderr)
        return exitcodes.RET_CONFIG
    return serve(config, progress_every_s=args.progress_every)


def download_config(config: Config, directory: Path, topic: str, *, group_id: str | None = None,
                    match: str | None = None, workers: int | None = None) -> Config:
    """The one-pipeline configuration behind `omsd download`: save every file from ``topic``."""
    pipeline = PipelineConfig(name="download", topic=topic, steps=[("save", {"dir": str(directory)})],
                              match=match, group_id=group_id)
    changes: dict = {"pipelines": [pipeline]}
    if workers:
        changes["workers"] = workers
    return replace(config, **changes)


def download_command(args: argparse.Namespace) -> int:
    use_log_level(args.log_level)
    configure_logging(process="supervisor")
    try:
        config = load_config(args.config)
        config = download_config(config, args.dir.resolve(), args.topic, group_id=args.group_id,
                                 match=args.match, workers=args.workers)
        heartbeat, log_topic = resolve_telemetry(config, args)  # OpenMSIStream's --heartbeat_topic_name ...
        config = replace(config, heartbeat=heartbeat, log=log_topic,
                         kafkacrypto=decrypt_overrides(config.kafkacrypto, args, ConfigError))
        if args.match:
            import re

            try:
                re.compile(args.match)
            except re.error as exc:
                raise ConfigError(f"--download_regex: {exc}") from None
    except ConfigError as exc:
        print(f"omsd: configuration error: {exc}", file=sys.stderr)
        return exitcodes.RET_CONFIG
    return serve(config, progress_every_s=args.progress_every)
