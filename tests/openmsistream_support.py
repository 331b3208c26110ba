"""Driving the real OpenMSIStream package, for the compatibility tests and the benchmarks alike.

Kept apart from ``tests/conftest.py`` so that the bench scripts (which put the
repository root on ``sys.path``) can import it without pulling in pytest.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from omsd.dev.broker import EMBEDDED_SESSION_TIMEOUT_MS


def openmsistream_ini(path: Path, bootstrap: str, *, group_id: str = "create_new",
                      session_timeout_ms: int = EMBEDDED_SESSION_TIMEOUT_MS, heartbeat_interval_ms: int = 500,
                      **sections: Mapping[str, object]) -> Path:
    """An OpenMSIStream INI config file: ``[broker]``, then ``sections`` in the order given (e.g.
    ``producer={"key.serializer": "StringSerializer"}``), then a ``[consumer]`` that reads chunk messages
    from the earliest offset without auto-commit."""
    consumer = {"group.id": group_id, "auto.offset.reset": "earliest", "enable.auto.commit": False,
                "session.timeout.ms": session_timeout_ms, "heartbeat.interval.ms": heartbeat_interval_ms,
                "key.deserializer": "StringDeserializer", "value.deserializer": "DataFileChunkDeserializer"}
    blocks = [{"bootstrap.servers": bootstrap}, *sections.values(), consumer]
    names = ["broker", *sections, "consumer"]
    path.write_text("\n".join(f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in block.items())
                              for name, block in zip(names, blocks)))
    return path


def quit_openmsistream(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Stop an OpenMSIStream program the way it expects: "q" on its stdin; killed if it has not exited in time."""
    if proc.poll() is None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"q\n")
            proc.stdin.flush()
        except OSError:  # includes BrokenPipeError: it has just exited
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
