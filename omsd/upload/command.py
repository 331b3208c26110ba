"""`omsd upload`: send files as OpenMSIStream chunk messages, fast and acknowledged.

The command exits 0 only when the broker acknowledged every chunk.
``--watch`` keeps running on one directory (see :mod:`omsd.upload.watcher`); the
engine is :mod:`omsd.upload.engine`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import structlog
from confluent_kafka import Producer

from omsd import exitcodes
from omsd.config import ConfigError, load_config
from omsd.kafka import check_client_configs, producer_config
from omsd.logging import configure_logging
from omsd.malloc import tune_malloc
from omsd.telemetry.options import add_telemetry_arguments
from omsd.telemetry.units import MB
from omsd.wire.protocol import DEFAULT_CHUNK_SIZE
from omsd.upload.console import connect, print_error
from omsd.upload.keys import DEFAULT_KEY_LINGER_S, linger_for_keys, open_node_or_report
from omsd.upload.progress import DEFAULT_EVERY_S as PROGRESS_EVERY_S, Progress
from omsd.upload.engine import CHUNK_QUEUE_BYTES, DEFAULT_CONNECT_TIMEOUT, FileJob, Uploader
from omsd.upload.files import OPENMSISTREAM_UPLOAD_REGEX, FileEntry, collect_files


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression ({exc}): {text!r}") from None


def _chunk_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value <= 0 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} is not a power of two (as in OpenMSIStream; e.g. "
                                         f"{DEFAULT_CHUNK_SIZE})")
    return value

log = structlog.get_logger(__name__)


def add_upload_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the arguments of ``omsd upload``."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files and directories to upload")
    parser.add_argument("--config", required=True, type=Path, help="YAML (or OpenMSIStream INI) config file")
    parser.add_argument("--topic", "--topic_name", dest="topic", required=True, help="topic to produce to")
    parser.add_argument("--chunk-size", "--chunk_size", dest="chunk_size", type=_chunk_size,
                        default=DEFAULT_CHUNK_SIZE, metavar="B",
                        help=f"bytes of file data per message, a power of two (default {DEFAULT_CHUNK_SIZE})")
    parser.add_argument("--watch", action="store_true",
                        help="keep running on one directory, uploading files that appear or change")
    parser.add_argument("--partitioner", choices=("file", "default"), default="file",
                        help="'file': all chunks of a file in one partition (default); "
                             "'default': librdkafka's partitioner")
    parser.add_argument("--upload-regex", "--upload_regex", dest="upload_regex", type=_regex, default=None,
                        metavar="REGEX",
                        help="only files whose path relative to the directory matches REGEX from its start. "
                             "Default with --watch: OpenMSIStream's "
                             f"'{OPENMSISTREAM_UPLOAD_REGEX.replace('%', '%%')}' (skips paths starting with '.' or "
                             "containing 'log' after the first character, e.g. x.log, catalog.csv; '.*' sends "
                             "everything); without --watch: every file of a directory")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--upload-existing", "--upload_existing", dest="upload_existing", action="store_true",
                          help="watch: on the first start, upload the files already in the directory too")
    existing.add_argument("--skip-existing", dest="upload_existing", action="store_false",
                          help="watch: on the first start, treat files already present as uploaded (the default, "
                               "as in OpenMSIStream)")
    parser.add_argument("--stable-secs", "--watchdog-lag-time", "--watchdog_lag_time", dest="stable_secs", type=float,
                        default=3.0, metavar="S",
                        help="watch: upload a file once its size and mtime are unchanged for S seconds (default 3)")
    parser.add_argument("--use-polling-observer", "--use_polling_observer", dest="use_polling_observer",
                        action="store_true",
                        help="watch: poll the directory instead of inotify (network shares such as SMB/CIFS or "
                             "NFS, where inotify misses changes)")
    parser.add_argument("--state", type=Path, default=None, metavar="FILE",
                        help="watch: SQLite file remembering uploaded files "
                             "(default state_dir/upload-<hash of dir and topic>.sqlite)")
    parser.add_argument("--connect-timeout", dest="connect_timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT,
                        metavar="S", help=f"give up when the broker does not answer within S seconds "
                                          f"(default {DEFAULT_CONNECT_TIMEOUT:g})")
    parser.add_argument("--readers", "--n_threads", dest="readers", type=int, default=min(4, os.cpu_count() or 1),
                        metavar="N", help="threads reading and hashing files (default: min(4, CPUs))")
    parser.add_argument("--queue-max-size", "--queue_max_size", dest="queue_mb", type=int,
                        default=CHUNK_QUEUE_BYTES // MB, metavar="MB",
                        help=f"MB of encoded chunks waiting to be produced (default {CHUNK_QUEUE_BYTES // MB}; 1 MB = 10^6 bytes)")
    parser.add_argument("--key-linger-secs", dest="key_linger_secs", type=float, default=DEFAULT_KEY_LINGER_S,
                        metavar="S", help="encrypted topics (kafkacrypto section): after the last chunk, keep "
                                          "answering key requests for S seconds so downloaders can decrypt "
                                          f"(default {DEFAULT_KEY_LINGER_S:g}; not with --watch, which stays up)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress and no summary, only errors")
    parser.add_argument("--progress-every", dest="progress_every", type=float, default=PROGRESS_EVERY_S,
                        metavar="S", help="without a terminal, a progress line every S seconds "
                                          f"(default {PROGRESS_EVERY_S:g}; 0: none)")
    add_telemetry_arguments(parser, "watch: heartbeats and log topic")


def upload_command(args: argparse.Namespace) -> int:
    """Run ``omsd upload``; return the process exit code."""
    configure_logging(level="warning", process="upload")  # the command speaks through its own lines
    tune_malloc()
    if args.watch and (len(args.paths) != 1 or not args.paths[0].is_dir()):
        print_error("--watch needs exactly one existing directory")
        return exitcodes.RET_USAGE
    try:
        config = load_config(args.config)
        check_client_configs(config, ("producer",))  # a misspelt librdkafka property, before connecting
    except ConfigError as exc:
        print_error(f"configuration error: {exc}")
        return exitcodes.RET_CONFIG
    except UnicodeDecodeError:
        print_error(f"{args.config}: the configuration is not a UTF-8 text file")
        return exitcodes.RET_CONFIG
    max_message = int(producer_config(config).get("message.max.bytes", 1 << 20))
    if not 1 <= args.chunk_size <= max_message - 65536:
        print_error(f"--chunk-size must be at most {max_message - 65536} bytes (message.max.bytes)")
        return exitcodes.RET_USAGE
    if args.queue_mb < 1:
        print_error("--queue-max-size must be at least 1 MB")
        return exitcodes.RET_USAGE
    if args.watch:
        from omsd.upload.watcher import watch_command

        return watch_command(args, config)
    # One-shot: the command's own lines say what went wrong; librdkafka's summaries would repeat them.
    logging.getLogger("omsd.librdkafka").setLevel(logging.ERROR)
    try:
        entries = collect_files(args.paths, args.upload_regex)
    except (FileNotFoundError, OSError) as exc:
        print_error(str(exc))
        return exitcodes.RET_USAGE
    total_bytes = 0
    for entry in entries:
        try:
            total_bytes += entry.path.stat().st_size
        except OSError:
            pass
    connected = connect(config, args)
    if connected is None:
        return exitcodes.RET_ERROR
    producer, partitions = connected
    ok, node = open_node_or_report(config, args.topic)
    if not ok:
        return exitcodes.RET_CONFIG
    try:
        code = _upload_files(producer, partitions, entries, total_bytes, args,
                             encrypt=node.encrypt if node is not None else None)
        if node is not None and code == exitcodes.RET_OK:
            linger_for_keys(node, args.key_linger_secs, quiet=args.quiet)
        return code
    finally:
        if node is not None:
            node.close()


def _upload_files(producer: Producer, partitions: int | None, entries: list[FileEntry], total_bytes: int,
                  args: argparse.Namespace, encrypt: Callable[[str, str, bytes], tuple] | None = None) -> int:
    progress = Progress(len(entries), total_bytes, quiet=args.quiet, every_s=args.progress_every)
    failed: list[FileJob] = []

    def done(job: FileJob) -> None:
        progress.file_done(job)
        if job.error is not None:
            failed.append(job)
            print_error(f"{job.entry.relative_path}: {job.error}")

    stop: list[int] = []

    def record_signal(signum: int, _frame: object) -> None:
        stop.append(signum)  # the loop below acts on it

    previous = {sig: signal.signal(sig, record_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    uploader = Uploader(producer, args.topic, chunk_size=args.chunk_size, partitions=partitions,
                        readers=args.readers, on_done=done, queue_bytes=args.queue_mb * MB,
                        encrypt=encrypt)
    try:
        for entry in entries:
            uploader.submit(entry)
        while not uploader.idle and not stop:
            uploader.pump(0.1)
            progress.draw(uploader)
        if stop:
            uploader.abort()
        left = uploader.finish(timeout=30 if stop else None)
        progress.draw(uploader, force=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    unfinished = [job for job in uploader.pending if not job.finished]
    progress.summary(args.topic, len(failed), len(unfinished))
    if stop:
        print_error(f"interrupted: {progress.files} of {len(entries)} files uploaded")
        return exitcodes.RET_ERROR
    if failed or unfinished or left:
        print_error(f"{len(failed) + len(unfinished)} of {len(entries)} files not fully acknowledged by the broker")
        return exitcodes.RET_ERROR
    return exitcodes.RET_OK
