"""Logging set-up, each case in a fresh interpreter (it configures the process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_json_lines_with_bound_context_and_stdlib_routing():
    proc = _run("""
        import logging, structlog
        from omsd.logging import configure_logging
        configure_logging(json=True, level="info", process="worker", slot=2)
        log = structlog.get_logger("omsd.test")
        log.debug("hidden")
        log.info("file saved", path="a/b.dat")
        logging.getLogger("boto3").warning("from %s", "stdlib")
        logging.getLogger("boto3").debug("hidden too")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("step failed")
        configure_logging(json=True, level="warning", process="worker", slot=2)
        log.info("hidden after reconfigure")
        log.warning("once")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["file saved", "from stdlib", "step failed", "once"]
    for line in lines:
        assert line["process"] == "worker" and line["slot"] == 2
        assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]
    assert lines[0]["path"] == "a/b.dat" and lines[0]["level"] == "info"
    assert lines[1]["logger"] == "boto3" and lines[1]["level"] == "warning"
    assert "ZeroDivisionError" in json.dumps(lines[2]["exception"])


def test_console_renderer_when_not_json():
    proc = _run("""
        import structlog
        from omsd.logging import configure_logging
        configure_logging(json=False, process="supervisor")
        structlog.get_logger("x").info("hello", n=1)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "hello" in proc.stderr and "process" in proc.stderr
    assert not proc.stderr.lstrip().startswith("{")


def test_default_is_json_when_stderr_is_not_a_tty():
    proc = _run("""
        import structlog
        from omsd.logging import configure_logging
        configure_logging()
        structlog.get_logger().info("piped")
    """)
    assert json.loads(proc.stderr.splitlines()[-1])["event"] == "piped"


def test_events_below_the_level_are_dropped_before_any_rendering():
    proc = _run("""
        import os, structlog
        from omsd.logging import configure_logging, use_log_level
        rendered = []
        class Spy:
            def __repr__(self):
                rendered.append(1)
                return "spy"
            __str__ = __repr__
        configure_logging(json=True, level="info")
        log = structlog.get_logger("omsd.test")
        for _ in range(1000):
            log.debug("file done", path="a", spy=Spy())
        print(len(rendered))
        log.info("shown", spy=Spy())
        print(len(rendered))
        use_log_level("debug")  # the default of this process and of the workers it starts
        configure_logging(json=True)
        log.debug("now shown")
        print(os.environ["OMSD_LOG_LEVEL"])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "1", "debug"]  # no debug event was rendered at info level
    assert [json.loads(line)["event"] for line in proc.stderr.splitlines()] == ["shown", "now shown"]
