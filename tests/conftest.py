"""Shared fixtures: a real Kafka-protocol broker (embedded Tansu) on a free loopback port.

Two Tansu facts shape the fixtures and the tests that use them:

- it keeps topics, messages and committed offsets in memory only: a broker that is stopped and
  started again (even with the same ``data_dir``, which holds its log file, not its topics) starts
  empty, so a test that restarts the broker sends its files again afterwards;
- a consumer that closes (or is killed) while its group join is in progress can leave that group
  without partitions for minutes — reproduced without omsd. A test that crashes a daemon during
  start-up, or kills it before its partitions are assigned, must use a fresh group id (or a fresh
  topic, whose default group ``omsd.<pipeline>`` is new with it) for the daemons that follow.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from omsd.dev.broker import EMBEDDED_SESSION_TIMEOUT_MS, EmbeddedBroker
from omsd.intake.staging import SHM_DIR, SHM_PREFIX
from omsd.states import STRICT_ENV

# A state change the transition table forbids raises in the tests and in every daemon they start
# (production logs it as an error instead).
os.environ[STRICT_ENV] = "1"


def _own_segments() -> set[str]:
    """Staging segments this test process created (their names carry its pid; other processes' do not)."""
    return {p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}*-{os.getpid()}-*")} if SHM_DIR.is_dir() else set()


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Fail a test that leaves shared-memory staging segments behind in /dev/shm."""
    before = _own_segments()
    yield
    leaked = _own_segments() - before
    for name in leaked:
        (SHM_DIR / name).unlink(missing_ok=True)  # one leak fails one test, not every test after it
    assert not leaked, f"staging segments left in {SHM_DIR}: {sorted(leaked)}"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded broker for the whole test session."""
    log_dir = tmp_path_factory.mktemp("broker")
    embedded = EmbeddedBroker(data_dir=log_dir)
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A fresh broker for a module that moves a lot of data (Tansu keeps it all in memory)."""
    embedded = EmbeddedBroker(data_dir=tmp_path_factory.mktemp("broker"))
    embedded.start()
    yield embedded
    embedded.stop()


S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server (a real S3 API over HTTP on loopback) started for this test session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


def client_props(bootstrap: str) -> dict:
    """Consumer settings that keep Tansu's group join short."""
    return {
        "bootstrap.servers": bootstrap,
        "session.timeout.ms": EMBEDDED_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 500,
    }


def pipeline(name: str, topic: str, *steps: str, **settings: object) -> str:
    """One entry of a config's ``pipelines:`` list, for :func:`write_config`.

    A step is YAML text such as ``"save: {dir: /out}"`` (lines after its first are
    indented under it); ``settings`` are further keys of the pipeline, written
    before its steps (``retries=0``, ``match="'^a/'"``, ``**{"group.id": "g"}``).
    """
    lines = [f"  - name: {name}", f"    topic: {topic}", *(f"    {key}: {value}" for key, value in settings.items()),
             "    steps:", *("      - " + step.replace("\n", "\n        ") for step in steps)]
    return "\n".join(lines) + "\n"


def write_config(path: Path, bootstrap: str, *pipelines: str, state_dir: Path | None = None,
                 workers: int | None = None, extra: str = "") -> Path:
    """A minimal omsd YAML config for tests, then ``workers``, the ``extra`` YAML text and the ``pipelines``
    (each from :func:`pipeline`)."""
    state = state_dir or path.parent / "state"
    body = (f"workers: {workers}\n" if workers is not None else "") + extra
    if pipelines:
        if body and not body.endswith("\n"):
            body += "\n"
        body += "pipelines:\n" + "".join(pipelines)
    path.write_text(
        f"""broker:
  bootstrap.servers: {bootstrap}
consumer:
  session.timeout.ms: {EMBEDDED_SESSION_TIMEOUT_MS}
  heartbeat.interval.ms: 500
state_dir: {state}
{body}"""
    )
    return path
