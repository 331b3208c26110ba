"""The `omsd` command: run, download, upload, service, broker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omsd import exitcodes


def _broker_command(args: argparse.Namespace) -> int:
    from omsd.dev.broker import BrokerError, run_broker

    try:
        return run_broker(args.port, args.data_dir)
    except BrokerError as exc:
        print(f"omsd broker: {exc}", file=sys.stderr)
        return exitcodes.RET_ERROR


def _upload_command(args: argparse.Namespace) -> int:
    from omsd.upload.command import upload_command

    return upload_command(args)


def _run_command(args: argparse.Namespace) -> int:
    from omsd.daemon import run_command

    return run_command(args)


def _download_command(args: argparse.Namespace) -> int:
    from omsd.daemon import download_command

    return download_command(args)


def _service_command(args: argparse.Namespace) -> int:
    from omsd.service import service_command

    return service_command(args)


def _add_daemon_output_arguments(parser: argparse.ArgumentParser) -> None:
    from omsd.logging import add_log_arguments
    from omsd.telemetry.progress import DEFAULT_EVERY_S

    add_log_arguments(parser)
    parser.add_argument("--progress-every", dest="progress_every", type=float, default=DEFAULT_EVERY_S, metavar="S",
                        help=f"an info line every S seconds while files flow (default {DEFAULT_EVERY_S:g}; 0: none)")


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", required=True, type=Path, help="YAML (or OpenMSIStream INI) config file")
    _add_daemon_output_arguments(run)
    run.set_defaults(func=_run_command)


def _add_download(sub: argparse._SubParsersAction) -> None:
    from omsd.crypto.settings import add_decrypt_arguments
    from omsd.telemetry.options import add_telemetry_arguments

    download = sub.add_parser("download", help="save every file from a topic into DIR (one 'save' pipeline)")
    download.add_argument("dir", type=Path)
    download.add_argument("--config", required=True, type=Path)
    download.add_argument("--topic", "--topic_name", dest="topic", required=True)
    download.add_argument("--consumer_group_id", "--group-id", dest="group_id", default=None)
    download.add_argument("--download_regex", "--match", dest="match", default=None)
    download.add_argument("--workers", "--n_threads", dest="workers", type=int, default=None)
    add_telemetry_arguments(download)
    _add_daemon_output_arguments(download)
    add_decrypt_arguments(download)
    download.set_defaults(func=_download_command)


def _add_upload(sub: argparse._SubParsersAction) -> None:
    from omsd.upload.command import add_upload_arguments

    upload = sub.add_parser("upload", help="upload files or directories as OpenMSIStream chunk messages")
    add_upload_arguments(upload)
    upload.set_defaults(func=_upload_command)


def _add_service(sub: argparse._SubParsersAction) -> None:
    from omsd.service import add_service_arguments

    service = sub.add_parser("service", help="install and manage omsd@NAME.service (systemd)",
                             description="Install one daemon per config file as the systemd unit omsd@NAME.service "
                                         "and manage it through systemctl.")
    add_service_arguments(service)
    service.set_defaults(func=_service_command)


def _add_broker(sub: argparse._SubParsersAction) -> None:
    broker = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) on loopback",
                            description="Run the embedded Kafka-protocol broker (Tansu) on loopback, for "
                                        "development and tests. It keeps topics, messages and committed "
                                        "offsets in memory only: a restarted broker starts empty.")
    broker.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    broker.add_argument("--data-dir", type=Path, default=None,
                        help="directory for the broker's log file (logs only: topics are not kept)")
    broker.set_defaults(func=_broker_command)


def _add_registry(sub: argparse._SubParsersAction) -> None:
    from omsd.registry_tools import add_registry_parser

    add_registry_parser(sub)


# Each subcommand's options, built by its own function: a command builds only its own (an `omsd download`
# does not import the uploader, the systemd service or the registry tools: ~20 ms sooner to its subscribe).
SUBCOMMANDS = {"run": _add_run, "download": _add_download, "upload": _add_upload, "service": _add_service,
               "broker": _add_broker, "registry": _add_registry}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of ``command`` when it names one (help and errors about
    an unknown command still list them all)."""
    parser = argparse.ArgumentParser(prog="omsd", description="Move and process data files through Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add in SUBCOMMANDS.items():
        if command not in SUBCOMMANDS or name == command:
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
