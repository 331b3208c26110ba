"""What an operator sees when the librdkafka settings are wrong or the broker is not there (no broker needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from omsd.dev.broker import free_port
from tests.chunks import REPO


def omsd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omsd.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_a_misspelt_librdkafka_property_is_a_config_error_before_anything_starts(tmp_path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "omsd.yaml"
    cfg.write_text(f"""state_dir: {state}
broker:
  bootstrap.server: 127.0.0.1:{free_port()}
pipelines:
  - name: p
    topic: t
    steps:
      - save: {{dir: {tmp_path / 'out'}}}
""")
    data = tmp_path / "a.txt"
    data.write_text("a")
    for args in (["upload", str(data), "--config", str(cfg), "--topic", "t"],
                 ["download", str(tmp_path / "dl"), "--config", str(cfg), "--topic", "t"],
                 ["run", "--config", str(cfg)]):
        done = omsd(*args, timeout=60)
        assert done.returncode == 78, (args, done.stderr)
        assert f"{cfg}:3: broker property 'bootstrap.server': No such configuration property" in done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not state.exists()  # found before the lock, the registry or a client was made
    cfg.write_text(f"consumer:\n  session.timeout.ms: soon\nstate_dir: {state}\n")
    done = omsd("download", str(tmp_path / "dl"), "--config", str(cfg), "--topic", "t", timeout=60)
    assert done.returncode == 78 and f"{cfg}:2: consumer property 'session.timeout.ms': Invalid value" in done.stderr


def test_upload_gives_up_soon_when_refused_and_waits_when_the_broker_is_silent(tmp_path) -> None:
    data = tmp_path / "a.txt"
    data.write_text("a")
    cfg = tmp_path / "omsd.yaml"
    cfg.write_text(f"broker:\n  bootstrap.servers: 127.0.0.1:{free_port()}\n")  # nothing listens there
    started = time.monotonic()
    done = omsd("upload", str(data), "--config", str(cfg), "--topic", "t", "--connect-timeout", "300")
    elapsed = time.monotonic() - started
    assert done.returncode == 1 and "refused the connection" in done.stderr, done.stderr
    assert elapsed < 150, elapsed  # a few quick retries, not the 300 s allowed for a silent broker
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        cfg.write_text(f"broker:\n  bootstrap.servers: 127.0.0.1:{silent.getsockname()[1]}\n")
        started = time.monotonic()
        done = omsd("upload", str(data), "--config", str(cfg), "--topic", "t", "--connect-timeout", "3")
        elapsed = time.monotonic() - started
    assert done.returncode == 1 and "within 3s" in done.stderr, done.stderr
    assert elapsed >= 3
