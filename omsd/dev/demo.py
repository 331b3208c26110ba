"""`make run`: omsd end to end on one machine, with nothing installed but the package.

    python -m omsd.dev.demo            # broker, daemon, upload, show; runs until Ctrl-C
    python -m omsd.dev.demo --check    # the same, then verify the saved files, stop, exit 0 if all is well

Starts the embedded broker on a free port, runs ``omsd run --config
etc/omsd.yaml`` with ``OMSD_BOOTSTRAP``, ``OMSD_STATE_DIR`` and
``OMSD_OUTPUT_DIR`` set in its environment, uploads ``etc/example-data/``
with ``omsd upload``, waits until every file is saved byte-identical, and
prints the saved files and ``omsctl status``. On Ctrl-C (or SIGTERM) it stops
what it started: the daemon (SIGTERM, a graceful stop), then the broker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omsd import exitcodes
from omsd.dev.broker import BrokerError, EmbeddedBroker
from omsd.config import Config, ConfigError, load_config
from omsd.daemon import StateDirLocked, lock_state_dir
from workers.pipeline import validate_pipeline

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = Path("etc/omsd.yaml")
DATA_NAME = Path("etc/example-data")
STOP_TIMEOUT_S = 30.0


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why."""


def project_root() -> Path:
    """The directory holding etc/omsd.yaml: the current one, else the source checkout."""
    for candidate in (Path.cwd(), PACKAGE_ROOT):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise DemoError(f"no {CONFIG_NAME} here or in {PACKAGE_ROOT}; run the demo from the omsd source tree")


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative posix path -> bytes); hidden temp files excluded."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def reset_state(var_dir: Path) -> None:
    """Start from an empty demo directory (the daemon's state_dir), unless a daemon still runs on it."""
    if var_dir.exists():
        try:
            fd = lock_state_dir(var_dir)
        except StateDirLocked as exc:
            raise DemoError(f"{exc}; stop it first (omsctl --socket {var_dir / 'omsd.sock'} stop)") from None
        os.close(fd)
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)


class Demo:
    """The processes the demo starts, and how to stop them."""

    def __init__(self, root: Path, var_dir: Path) -> None:
        self.root = root
        self.var_dir = var_dir
        self.config_path = root / CONFIG_NAME
        self.data_dir = root / DATA_NAME
        self.state_dir = var_dir
        self.output_dir = var_dir / "out"
        self.daemon_log = var_dir / "daemon.log"
        self.broker = EmbeddedBroker(data_dir=var_dir / "broker")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.config: Config | None = None

    # -- start ---------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "OMSD_BOOTSTRAP": self.broker.bootstrap, "OMSD_STATE_DIR": str(self.state_dir),
                "OMSD_OUTPUT_DIR": str(self.output_dir)}

    def load_config(self) -> Config:
        """etc/omsd.yaml as the daemon will read it (same environment)."""
        saved = dict(os.environ)
        os.environ.update(self.env())
        try:
            config = load_config(self.config_path, require_pipelines=True, validate_steps=validate_pipeline)
        except ConfigError as exc:
            raise DemoError(f"configuration error: {exc}") from None
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if not config.pipelines:
            raise DemoError(f"{self.config_path} has no pipeline")
        self.config = config
        return config

    @property
    def topic(self) -> str:
        assert self.config is not None
        return self.config.pipelines[0].topic

    @property
    def socket(self) -> Path:
        assert self.config is not None
        return self.config.control_socket

    def start_broker(self) -> None:
        try:
            self.broker.start()
        except BrokerError as exc:
            raise DemoError(f"the embedded broker did not start: {exc}") from None
        print(f"broker   : embedded Tansu on {self.broker.bootstrap}")

    def start_daemon(self, timeout: float = 30.0) -> None:
        """`omsd run --config etc/omsd.yaml`, in its own session so Ctrl-C reaches only us."""
        with open(self.daemon_log, "ab") as out:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "omsd.cli", "run", "--config", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root, env=self.env(),
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            self._check_daemon("while starting")
            if time.monotonic() > deadline:
                raise DemoError(f"the daemon did not open its control socket within {timeout:.0f} s; "
                                f"see {self.daemon_log}")
            time.sleep(0.05)
        print(f"daemon   : omsd run --config {CONFIG_NAME} (pid {self.daemon.pid}, log {self.daemon_log})")

    def _check_daemon(self, when: str) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise DemoError(f"the daemon exited with code {self.daemon.returncode} {when}; "
                            f"last lines of {self.daemon_log}:\n{log_tail(self.daemon_log)}")

    def upload(self) -> None:
        """`omsd upload etc/example-data --config etc/omsd.yaml --topic raw_files`."""
        cmd = [sys.executable, "-m", "omsd.cli", "upload", str(self.data_dir), "--config", str(self.config_path),
               "--topic", self.topic]
        print(f"upload   : {script('omsd')} upload {DATA_NAME} --config {CONFIG_NAME} --topic {self.topic}")
        result = subprocess.run(cmd, cwd=self.root, env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace").strip()[-2000:]
            raise DemoError(f"omsd upload failed with exit code {result.returncode}:\n{output}")

    def wait_saved(self, timeout: float) -> dict[str, bytes]:
        """Wait until the output directory holds exactly the example data."""
        expected = tree(self.data_dir)
        deadline = time.monotonic() + timeout
        while True:
            saved = tree(self.output_dir)
            if saved == expected:
                return saved
            self._check_daemon("before every file was saved")
            if time.monotonic() > deadline:
                missing = sorted(set(expected) - set(saved))
                differ = sorted(k for k in saved if k in expected and saved[k] != expected[k])
                raise DemoError(f"not every file was saved within {timeout:.0f} s (missing: {missing}, "
                                f"different: {differ}); see {self.daemon_log}")
            time.sleep(0.1)

    # -- show ----------------------------------------------------------------------------------
    def show(self, saved: dict[str, bytes]) -> None:
        print(f"\nsaved under {self.output_dir}:")
        for rel, data in saved.items():
            print(f"  {rel:40} {len(data):>8} bytes")
        print(f"\n$ omsctl --socket {self.socket} status")
        result = subprocess.run([sys.executable, "-m", "omsd.ctl", "--socket", str(self.socket), "status"],
                                cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        print(result.stdout.decode(errors="replace").rstrip())

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> int | None:
        """Stop the daemon (SIGTERM, graceful), then the broker; returns the daemon's exit code."""
        code = None
        if self.daemon is not None:
            if self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
            try:
                code = self.daemon.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"the daemon did not stop within {STOP_TIMEOUT_S:.0f} s; killing it", file=sys.stderr)
                self.daemon.kill()
                code = self.daemon.wait()
            self.daemon = None
        self.broker.stop()
        return code


def log_tail(path: Path, n_chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""


def wait_for_stop_signal(demo: Demo) -> None:
    """Block until Ctrl-C or SIGTERM; complain if the daemon or the broker dies meanwhile."""
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    signal.signal(signal.SIGINT, record)
    signal.signal(signal.SIGTERM, record)
    while not received:
        demo._check_daemon("while running")
        if demo.broker.process is not None and demo.broker.process.poll() is not None:
            raise DemoError(f"the broker exited with code {demo.broker.process.returncode}")
        time.sleep(0.2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m omsd.dev.demo", description="Run omsd end to end on this machine.")
    parser.add_argument("--check", action="store_true",
                        help="upload, verify the saved files, stop everything and exit (0 = all good)")
    parser.add_argument("--var", type=Path, default=None,
                        help="the demo's directory, emptied at start (default: ./var/demo; a temporary one "
                             "with --check)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the saved files")
    return parser.parse_args(argv)


def script(name: str) -> str:
    """How to call one of omsd's commands from here: the script beside this interpreter (``.venv/bin/omsd``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name  # installed on PATH some other way
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def next_steps(bootstrap: str, topic: str, socket_path: Path) -> str:
    """The hint printed once the demo runs: how to upload more and look at the daemon."""
    return (f"Running. Upload more with:\n  OMSD_BOOTSTRAP={bootstrap} {script('omsd')} upload DIR "
            f"--config {CONFIG_NAME} --topic {topic}\n"
            f"Status:  {script('omsctl')} --socket {socket_path} status\n"
            f"(or activate the virtualenv first: . {Path(script('omsd')).parent}/activate)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = None
    try:
        root = project_root()
        if args.var is not None:
            var_dir = args.var.resolve()
        elif args.check:
            temporary = var_dir = Path(tempfile.mkdtemp(prefix="omsd-demo-"))
        else:
            var_dir = root / "var" / "demo"
        reset_state(var_dir)
    except DemoError as exc:
        print(f"omsd demo: {exc}", file=sys.stderr)
        return exitcodes.RET_ERROR
    demo = Demo(root, var_dir)
    status = exitcodes.RET_OK
    try:
        demo.start_broker()
        demo.load_config()
        demo.start_daemon()
        demo.upload()
        saved = demo.wait_saved(args.timeout)
        demo.show(saved)
        if args.check:
            print(f"\ncheck: all {len(saved)} files saved byte-identical")
        else:
            print(f"\n{next_steps(demo.broker.bootstrap, demo.topic, demo.socket)}\n"
                  "Ctrl-C stops the daemon and the broker.")
            wait_for_stop_signal(demo)
            print("\nstopping ...")
    except DemoError as exc:
        print(f"omsd demo: {exc}", file=sys.stderr)
        status = exitcodes.RET_ERROR
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
        code = demo.stop()
        if code not in (None, 0):
            print(f"omsd demo: the daemon exited with code {code}; see {demo.daemon_log}", file=sys.stderr)
            status = exitcodes.RET_ERROR
        else:
            print("daemon and broker stopped")
        if temporary is not None and status == exitcodes.RET_OK:
            shutil.rmtree(temporary, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
