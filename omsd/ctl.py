"""``omsctl``: talk to a running omsd over its control socket.

    omsctl [--config FILE | --socket PATH] check|status|stop|failed|retry [--json]

Exit codes (see ``omsd.exitcodes``): 0 success / healthy, 1 error / degraded,
2 usage, 3 daemon not running, 78 unreadable config.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import psutil

from omsd import exitcodes
from omsd.control.client import ControlClient, ControlTimeout, DaemonNotRunning
from omsd.control.protocol import ControlError
from omsd.telemetry.units import human_bytes, human_duration, human_rate

DEFAULT_SOCKET = Path("var/omsd.sock")
#: Seconds ``stop`` waits beyond the requested graceful-stop timeout.
STOP_GRACE_S = 10.0
WATCH_DEFAULT_S = 2.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, clear: redraw in place as top does
_POLL_S = 0.1


class _Failure(Exception):
    """A reported failure: message for the user and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing ---------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omsctl", description="Query and control a running omsd daemon.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, metavar="FILE",
                       help="omsd config file (its control_socket is used)")
    where.add_argument("--socket", type=Path, metavar="PATH",
                       help=f"control socket path (default: ./{DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true", help="print the raw JSON reply")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the raw JSON reply")
        return p

    command("check", "health check: prints a JSON report; exit 0 healthy, 1 degraded, "
                     "3 not running")
    status = command("status", "show pipelines, partitions, files in progress, workers and totals "
                               "(sizes in decimal units: 1 MB = 1,000,000 bytes)")
    status.description = (status.description + ". Partition offsets: COMMITTED is the group's committed offset "
                          "(a restart reads from there); SAFE the lowest offset a file in flight still needs "
                          "(committed up to it within a second); POSITION the next offset the consumer fetches; "
                          "LAG the messages from COMMITTED to the partition's end.")
    status.add_argument("--watch", nargs="?", type=float, const=WATCH_DEFAULT_S, default=None, metavar="SECONDS",
                        help=f"refresh every SECONDS (default {WATCH_DEFAULT_S:g}) with rates, in place on a "
                             "terminal; Ctrl-C ends")
    stop = command("stop", "ask for a graceful stop and wait until the daemon is gone")
    stop.add_argument("--timeout", type=float, default=60.0, metavar="S",
                      help="graceful-stop time allowed to the daemon, > 0 (default 60)")
    command("failed", "list files whose pipeline failed, and kept undecryptable messages")
    retry = command("retry", "queue failed files (or kept undecryptable messages) for another attempt")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("path", nargs="?", help="relative path of one failed file")
    which.add_argument("--all", action="store_true", help="retry every failed file")
    which.add_argument("--undecryptable", action="store_true",
                       help="try to decrypt every kept undecryptable message again (keys are requested anew)")
    return parser


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return args.socket
    if args.config is not None:
        from omsd.config import load_config  # only needed with --config

        try:
            return Path(load_config(args.config).control_socket)
        except Exception as exc:  # any config problem is reported the same way
            raise _Failure(f"cannot read config {args.config}: {exc}", exitcodes.RET_CONFIG)
    return DEFAULT_SOCKET


# -- output helpers -----------------------------------------------------------
def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(rows: Iterable[dict[str, Any]],
                 columns: Sequence[tuple[str, str, Callable[[Any], str]]]) -> str:
    """Rows as an aligned text table; columns are ``(key, header, formatter)``."""
    lines = [[header for _, header, _ in columns]]
    for row in rows:
        lines.append([fmt(row.get(key)) if isinstance(row, dict) else "-"
                      for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
        for line in lines)


def _section(title: str, rows: Any,
             columns: Sequence[tuple[str, str, Callable[[Any], str]]]) -> list[str]:
    if not isinstance(rows, list):
        return []
    if not rows:
        return [f"{title}: none", ""]
    return [f"{title} ({len(rows)})", format_table(rows, columns), ""]


PARTITION_LEGEND = "\n".join([
    "  COMMITTED: offset committed for the group (a restart reads from here);",
    "  SAFE: lowest offset still needed by a file in flight (committed up to it within a second);",
    "  POSITION: next offset the consumer fetches; LAG: messages from COMMITTED to the partition's end."])


def format_rates(rates: dict[str, float] | None) -> str:
    """The ``--watch`` rates line, from two successive status replies."""
    if not rates:
        return "Rates: - (after the next refresh)"
    return (f"Rates: {rates['files_completed']:.1f} files/s, {human_rate(rates['bytes_completed'])} done; "
            f"read {rates['messages_read']:.0f} messages/s, {human_rate(rates['bytes_read'])}; "
            f"{rates['files_failed']:.1f} failed/s")


def rates_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float] | None:
    """Per-second rates of the totals between two status replies (None when they cannot be compared)."""
    t0, t1 = before.get("uptime_s"), after.get("uptime_s")
    a, b = before.get("totals") or {}, after.get("totals") or {}
    if not isinstance(t0, (int, float)) or not isinstance(t1, (int, float)) or t1 <= t0 \
            or before.get("pid") != after.get("pid"):
        return None
    keys = ("files_completed", "bytes_completed", "files_failed", "messages_read", "bytes_read")
    return {k: max(0.0, (b.get(k, 0) - a.get(k, 0)) / (t1 - t0)) for k in keys}


def format_status(reply: dict[str, Any]) -> str:
    """The ``status`` reply as readable text; missing keys are skipped or shown as ``-``."""
    out = [f"omsd pid {_cell(reply.get('pid'))}, state {_cell(reply.get('state'))}, "
           f"up {human_duration(reply.get('uptime_s'))}", ""]
    disk = reply.get("disk_full")
    if isinstance(disk, dict):
        out += [f"State directory full: {_cell(disk.get('directory'))} ({human_bytes(disk.get('free_bytes'))} "
                f"free) for {human_duration(disk.get('since_s'))}; {_cell(disk.get('waiting_writes'))} writes "
                "waiting, intake paused", ""]
    out += _section("Pipelines", reply.get("pipelines"), [
        ("name", "NAME", _cell), ("topic", "TOPIC", _cell), ("group", "GROUP", _cell)])
    partitions = _section("Partitions", reply.get("partitions"), [
        ("group", "GROUP", _cell), ("topic", "TOPIC", _cell), ("partition", "PART", _cell),
        ("committed", "COMMITTED", _cell), ("watermark", "SAFE", _cell),
        ("position", "POSITION", _cell), ("lag", "LAG", _cell), ("paused", "PAUSED", _cell)])
    if len(partitions) == 3:  # a table: say what its offsets mean
        partitions.insert(2, PARTITION_LEGEND)
    out += partitions
    out += _section("Files in progress", reply.get("in_progress"), [
        ("path", "PATH", _cell), ("chunks_received", "CHUNKS", _cell),
        ("chunks_total", "OF", _cell), ("bytes", "BYTES", human_bytes),
        ("age_s", "AGE", human_duration)])
    staging = reply.get("staging")
    if isinstance(staging, dict):
        out += [f"Staging: memory {human_bytes(staging.get('memory_used'))} of "
                f"{human_bytes(staging.get('memory_budget'))} (+{human_bytes(staging.get('memory_kept', 0))} kept "
                f"for reuse), spill "
                f"{human_bytes(staging.get('spill_used'))}, {_cell(staging.get('files'))} files",
                ""]
    out += _section("Workers", reply.get("workers"), [
        ("slot", "SLOT", _cell), ("pid", "PID", _cell), ("state", "STATE", _cell),
        ("files_done", "DONE", _cell), ("restarts", "RESTARTS", _cell),
        ("current_file", "CURRENT FILE", _cell), ("step", "STEP", _cell),
        ("step_running_s", "RUNNING", human_duration), ("step_limit_s", "LIMIT", human_duration)])
    totals = reply.get("totals")
    if isinstance(totals, dict):
        out += [
            "Totals:",
            f"  read      {_cell(totals.get('messages_read'))} messages, "
            f"{human_bytes(totals.get('bytes_read'))}",
            f"  files     {_cell(totals.get('files_completed'))} completed "
            f"({human_bytes(totals.get('bytes_completed'))}), {_cell(totals.get('files_failed'))} failed",
            f"  produced  {_cell(totals.get('messages_produced'))} messages, "
            f"{human_bytes(totals.get('bytes_produced'))}",
            ""]
    rejected = reply.get("rejected")
    if isinstance(rejected, dict):
        text = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items()))
        out += [f"Rejected messages: {text or 'none'}", ""]
    out += _section("Decryption (kafkacrypto)", reply.get("decryption"), [
        ("group", "GROUP", _cell), ("node_id", "NODE", _cell), ("decrypted", "DECRYPTED", _cell),
        ("waiting_for_keys", "WAITING", _cell), ("kept", "UNDECRYPTABLE", _cell),
        ("recovered", "RECOVERED", _cell), ("oldest_wait_s", "OLDEST WAIT", human_duration)])
    handover = reply.get("handover")
    if isinstance(handover, dict):
        if handover.get("topic"):
            state = "in use" if handover.get("available") else "unavailable (finished files may be repeated)"
            out += [f"Handover: topic {handover['topic']} {state}; {_cell(handover.get('skipped_messages'))} "
                    "messages skipped as finished by a partition's previous owner", ""]
        else:
            out += ["Handover: off (handover_topic is null)", ""]
    out += _section("Recent errors", reply.get("recent_errors"), [
        ("time", "TIME", _cell), ("message", "MESSAGE", _cell)])
    return "\n".join(out).rstrip()


def _one_line(value: Any, width: int = 80) -> str:
    text = " ".join(_cell(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_failed(reply: dict[str, Any]) -> str:
    """The ``failed`` reply as a table."""
    files = reply.get("files")
    kept = reply.get("undecryptable")
    out = [format_table(files, [
        ("path", "PATH", _cell), ("generation", "GEN", _cell), ("pipeline", "PIPELINE", _cell),
        ("step", "STEP", _cell), ("attempts", "ATTEMPTS", _cell), ("error", "ERROR", _one_line)])
        if isinstance(files, list) and files else "no failed files"]
    if isinstance(kept, list) and kept:
        out += ["", f"{len(kept)} undecryptable message{'' if len(kept) == 1 else 's'} kept "
                "(omsctl retry --undecryptable tries them again):", format_table(kept, [
                    ("group", "GROUP", _cell), ("topic", "TOPIC", _cell), ("partition", "PART", _cell),
                    ("offset", "OFFSET", _cell), ("bytes", "BYTES", human_bytes), ("file", "FILE", _cell)])]
    return "\n".join(out)


# -- commands -----------------------------------------------------------------
def _request(client: ControlClient, cmd: str, **args: Any) -> dict[str, Any]:
    """Send a request; an ``ok: false`` reply becomes a ``_Failure``."""
    reply = client.request(cmd, **args)
    if reply.get("ok") is not True:
        raise _Failure(f"omsd: {reply.get('error', 'request failed')}", exitcodes.RET_ERROR)
    return reply


def _cmd_check(client: ControlClient, args: argparse.Namespace) -> int:
    try:
        reply = client.request("check")
    except DaemonNotRunning as exc:
        _print_json({"status": "not running", "reasons": [str(exc)]})
        return exitcodes.CHECK_NOT_RUNNING
    except (ControlError, OSError) as exc:
        _print_json({"status": "degraded", "reasons": [f"control socket: {exc}"]})
        return exitcodes.CHECK_DEGRADED
    if reply.get("ok") is not True:
        _print_json({"status": "degraded",
                     "reasons": [str(reply.get("error", "check failed"))]})
        return exitcodes.CHECK_DEGRADED
    healthy = reply.get("healthy") is True
    reasons = reply.get("reasons")
    if not isinstance(reasons, list):
        reasons = [] if reasons is None else [str(reasons)]
    report = {"status": "healthy" if healthy else "degraded", "reasons": reasons}
    report.update((k, v) for k, v in reply.items() if k not in ("ok", "healthy", "reasons"))
    _print_json(report)
    return exitcodes.CHECK_HEALTHY if healthy else exitcodes.CHECK_DEGRADED


def _show(client: ControlClient, args: argparse.Namespace, cmd: str, render: Callable[[dict], str]) -> int:
    """Ask the daemon ``cmd`` and print the reply as JSON or rendered for a person."""
    reply = _request(client, cmd)
    if args.json:
        _print_json(reply)
    else:
        print(render(reply))
    return exitcodes.RET_OK


def _cmd_status(client: ControlClient, args: argparse.Namespace) -> int:
    if args.watch is None:
        return _show(client, args, "status", format_status)
    if not args.watch > 0:
        raise _Failure("omsctl: --watch needs a number of seconds > 0", exitcodes.RET_USAGE)
    return _watch(client, args.watch, tty=sys.stdout.isatty())


def _watch(client: ControlClient, every_s: float, *, tty: bool) -> int:
    """``status --watch``: the status again every ``every_s`` seconds, with rates, like ``top``."""
    previous: dict[str, Any] | None = None
    try:
        while True:
            reply = _request(client, "status")
            rates = rates_between(previous, reply) if previous is not None else None
            screen = f"{format_rates(rates)}   (every {every_s:g} s; Ctrl-C ends)\n\n{format_status(reply)}"
            if tty:
                sys.stdout.write(CLEAR_SCREEN + screen + "\n")
            else:
                sys.stdout.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{screen}\n\n")
            sys.stdout.flush()
            previous = reply
            time.sleep(every_s)
    except KeyboardInterrupt:
        return exitcodes.RET_OK


def _process_gone(pid: int, create_time: float | None) -> bool:
    """True when ``pid`` no longer runs (exited, zombie, or reused by another process)."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and proc.create_time() != create_time:
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def _socket_gone(path: Path) -> bool:
    """True when the socket file is missing or nothing accepts connections on it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return True
        except OSError:
            return False
    return False


def _cmd_stop(client: ControlClient, args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise _Failure("omsctl: --timeout must be a positive number of seconds", exitcodes.RET_USAGE)
    pid_reply = _request(client, "stop", timeout=args.timeout).get("pid")
    pid = pid_reply if isinstance(pid_reply, int) else None
    create_time = None
    if pid is not None:
        try:
            create_time = psutil.Process(pid).create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    started = time.monotonic()
    limit = args.timeout + STOP_GRACE_S
    stopped = False
    while True:
        pid_gone = pid is None or _process_gone(pid, create_time)
        if pid_gone and _socket_gone(client.path):
            stopped = True
            break
        if time.monotonic() - started >= limit:
            break
        time.sleep(_POLL_S)
    waited = time.monotonic() - started
    if args.json:
        _print_json({"stopped": stopped, "pid": pid, "waited_s": round(waited, 3)})
    elif stopped:
        print(f"stopped (pid {_cell(pid)}, {waited:.1f} s)")
    else:
        print(f"still running after {waited:.0f} s (pid {_cell(pid)})")
    return exitcodes.RET_OK if stopped else exitcodes.RET_ERROR


def _cmd_failed(client: ControlClient, args: argparse.Namespace) -> int:
    return _show(client, args, "failed", format_failed)


def _cmd_retry(client: ControlClient, args: argparse.Namespace) -> int:
    request = {"all": True} if args.all else {"undecryptable": True} if args.undecryptable else {"path": args.path}
    reply = _request(client, "retry", **request)
    if args.json:
        _print_json(reply)
    else:
        queued = reply.get("queued", 0)
        what = "undecryptable message" if args.undecryptable else "file"
        print(f"queued {queued} {what}{'' if queued == 1 else 's'} for retry")
    return exitcodes.RET_OK


_COMMANDS: dict[str, Callable[[ControlClient, argparse.Namespace], int]] = {
    "check": _cmd_check,
    "status": _cmd_status,
    "stop": _cmd_stop,
    "failed": _cmd_failed,
    "retry": _cmd_retry,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``omsctl``; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return exc.code if isinstance(exc.code, int) else exitcodes.RET_USAGE
    try:
        path = _socket_path(args)
    except _Failure as exc:
        if args.command == "check":
            _print_json({"status": "unknown", "reasons": [str(exc)]})
        else:
            print(f"omsctl: {exc}", file=sys.stderr)
        return exc.code
    client = ControlClient(path)
    try:
        return _COMMANDS[args.command](client, args)
    except _Failure as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except DaemonNotRunning:
        print(f"omsd is not running (no daemon on {path})", file=sys.stderr)
        return exitcodes.RET_NOT_RUNNING
    except ControlTimeout as exc:
        print(f"omsctl: {exc}", file=sys.stderr)
        return exitcodes.RET_ERROR
    except (ControlError, OSError) as exc:
        print(f"omsctl: {path}: {exc}", file=sys.stderr)
        return exitcodes.RET_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
